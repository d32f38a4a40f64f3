"""Units behind "any LightningModule": fitting perfkit's defaults to a user's class, the network of a
module and its recorded inputs, the training metric a module without validation follows, and the
library transforms on attention and transformer layers."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import perfkit
from perfkit.config import config_dir
from perfkit.monitoring import training_loss
from perfkit.network import Call, network_path
from perfkit.targets import fit_defaults, own_option


class UserData:
    def __init__(self, batch_size: int = 32, split: tuple[int, int] = (8, 2), root: str = "x") -> None:
        self.batch_size = batch_size


class NeedsBatch:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size


def _fit(node: dict, group: str = "data", option: str = "mnist", named: tuple[str, ...] = ()) -> tuple:
    cfg = OmegaConf.create(node)
    own = own_option(config_dir(), group, option)
    fitted = fit_defaults(cfg, own, group, named=named)
    return OmegaConf.to_container(cfg), fitted


def _perfkit_data(target: str, **extra: object) -> dict:
    own = own_option(config_dir(), "data", "mnist")
    assert own is not None
    return {**OmegaConf.to_container(own), "_target_": target, **extra}  # type: ignore[dict-item]


def test_a_users_class_gets_its_own_defaults_not_perfkits() -> None:
    node, fitted = _fit(_perfkit_data(f"{__name__}.UserData"))
    assert node == {"_target_": f"{__name__}.UserData", "batch_size": 32}
    assert fitted[0].own_defaults == {"batch_size": 32} and "pin_memory" in fitted[0].left_out


def test_a_key_set_on_the_command_line_stays() -> None:
    node, _ = _fit(_perfkit_data(f"{__name__}.UserData", batch_size=64), named=("data.batch_size",))
    assert node["batch_size"] == 64


def test_a_required_plain_parameter_keeps_perfkits_value() -> None:
    node, _ = _fit(_perfkit_data(f"{__name__}.NeedsBatch"))
    assert node == {"_target_": f"{__name__}.NeedsBatch", "batch_size": 64}


def test_perfkits_own_classes_keep_their_keys() -> None:
    node, fitted = _fit(_perfkit_data("perfkit.data.MNISTDataModule"))
    assert node["batch_size"] == 64 and node["pin_memory"] is None and fitted == []


def test_the_users_own_file_is_never_fitted() -> None:
    cfg = OmegaConf.create({"_target_": f"{__name__}.UserData", "batch_size": 64})
    assert fit_defaults(cfg, own_option(config_dir(), "data", "their_own"), "data", named=()) == []
    assert cfg.batch_size == 64


def test_perfkits_factories_never_reach_a_users_model() -> None:
    own = own_option(config_dir(), "model", "cnn")
    assert own is not None
    cfg = OmegaConf.merge(own, {"_target_": "tests.user_project.zoo.template.TemplateLitModule"})
    fit_defaults(cfg, own, "model", named=())  # type: ignore[arg-type]
    assert set(cfg) == {"_target_"}  # net, optimizer (${optimizer}), scheduler, label_smoothing...


def test_a_chosen_optimizer_group_reaches_a_users_model_that_takes_one() -> None:
    own = own_option(config_dir(), "model", "cnn")
    assert own is not None
    cfg = OmegaConf.merge(own, {"_target_": "tests.user_project.zoo.template.TemplateLitModule"})
    fit_defaults(cfg, own, "model", named=(), groups_named=("optimizer",))  # type: ignore[arg-type]
    assert OmegaConf.to_container(cfg, resolve=False)["optimizer"] == "${optimizer}"  # type: ignore[index]


def test_the_network_of_each_shape() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "user_project"))
    from zoo.gan import GAN
    from zoo.lm import LanguageModel
    from zoo.template import DenseNet, TemplateLitModule

    assert network_path(TemplateLitModule(DenseNet(), torch.optim.Adam, None)) == "net"
    assert network_path(GAN()) == ""
    assert network_path(LanguageModel()) == "model"


def test_a_recorded_call_is_resized_along_its_batch_dimension() -> None:
    call = Call((torch.arange(6).view(3, 2),), {"mask": torch.ones(3), "scale": 2.0})
    bigger = call.resized(7)
    assert bigger.batch_size == 7 and bigger.kwargs["scale"] == 2.0
    assert bigger.args[0][:3].tolist() == call.args[0].tolist() and bigger.kwargs["mask"].shape == (7,)
    assert call.resized(2).args[0].shape == (2, 2)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["train_loss", "epoch"], "train_loss"),
        (["loss_step", "loss_epoch", "acc"], "loss_epoch"),
        (["g_loss", "d_loss"], None),
        (["acc"], None),
        (["val_loss", "train/loss"], "train/loss"),
    ],
)
def test_the_training_loss_a_module_without_validation_follows(
    names: list[str], expected: str | None
) -> None:
    assert training_loss(names) == expected


class HFSelfAttention(nn.Module):
    """Attention that keeps its head count as attributes and reshapes by them (Hugging Face style)."""

    def __init__(self, hidden: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # like newer transformers: -1 heads, so a narrower projection silently means fewer heads
        split = lambda y: y.view(b, t, -1, self.attention_head_size).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return x + self.dense(out.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = HFSelfAttention()
        self.ffn = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.head(x + self.ffn(x)).mean(1)


def test_channel_pruning_keeps_attention_heads_whole() -> None:
    model, x = Block().eval(), torch.randn(2, 5, 32)
    pruned = perfkit.prune(model, amount=0.5, method="channels", example_inputs=x)
    attention = pruned.attention  # type: ignore[union-attr]
    assert attention.query.out_features == 4 * 8 and attention.num_attention_heads == 4
    assert pruned.ffn[0].out_features < 128  # type: ignore[index]
    assert pruned(x).shape == (2, 3)
    assert any("kept at full width" in note for note in perfkit.reports(pruned)[-1].notes)


def test_quantize_covers_the_decoder_layers_of_a_transformer() -> None:
    class Seq2Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = nn.Transformer(32, 4, 1, 2, 64, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.transformer(x, x)

    model = Seq2Seq().eval()
    quantized = perfkit.quantize(model, example_inputs=torch.randn(2, 5, 32))
    assert perfkit.reports(quantized)[-1].changed == {"Linear": 4}  # 2 decoder layers x 2 feed-forward


def test_quantize_warns_when_the_int8_outputs_collapse() -> None:
    model = nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        model.weight.normal_(0, 1e-3)
        model.weight[0, 0] = 1e4  # one outlier: per-tensor int8 rounds every other weight to 0
    x = torch.randn(8, 16)
    x[:, 0] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = perfkit.quantize(nn.Sequential(model), example_inputs=x)
    assert any("all zeros" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert any("all zeros" in note for note in perfkit.reports(quantized)[-1].notes)
