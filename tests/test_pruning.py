"""perfkit.prune: exact sparsity for the mask methods, channel pruning on perfkit's and users' models,
reports that say what changed and what was left alone, errors that say what is allowed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import perfkit
from perfkit.models import MLP, SmallCNN, resnet18, vit
from perfkit.optim import prune, reports
from tests.helpers.checks import assert_untouched, round_trip, snapshot
from tests.helpers.toy_models import TOY_MODELS, TinyConvNet, TinyMLP

DIGIT = (1, 28, 28)


PERFKIT_MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn": lambda: SmallCNN(DIGIT, 10),
    "mlp": lambda: MLP(DIGIT, 10),
    "resnet18": lambda: resnet18(DIGIT, 10),
    "vit": lambda: vit(DIGIT, 10),
}


MASK_METHODS = ["l1_unstructured", "random_unstructured", "global_l1", "ln_structured"]


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured"])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9])
def test_per_layer_unstructured_sparsity_is_exact(method: str, amount: float) -> None:
    model = TinyConvNet()
    pruned = prune(model, amount=amount, method=method)
    for weight in _weights(pruned):
        assert int((weight == 0).sum()) == round(amount * weight.numel())


def test_global_l1_sparsity_is_exact_over_all_layers() -> None:
    pruned = prune(TinyMLP(), amount=0.6, method="global_l1")
    weights = _weights(pruned)
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.6 * total)
    # global: layers end up with different sparsities
    assert len({round(float((w == 0).float().mean()), 3) for w in weights}) > 1


def test_ln_structured_zeroes_whole_rows_and_keeps_the_output_layer() -> None:
    model = TinyMLP()
    pruned = prune(model, amount=0.5, method="ln_structured")
    *hidden, output = _weights(pruned)
    for weight in hidden:
        zero_rows = int((weight.abs().sum(dim=1) == 0).sum())
        assert zero_rows == round(0.5 * weight.shape[0])
    assert torch.equal(output, _weights(model)[-1])


@pytest.mark.parametrize("method", MASK_METHODS)
def test_masks_are_permanent_and_reported_honestly(method: str) -> None:
    model = TinyConvNet()
    before = snapshot(model)
    pruned = prune(model, amount=0.5, method=method)
    assert_untouched(model, before)
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())
    assert set(pruned.state_dict()) == set(model.state_dict())
    report = reports(pruned)[-1]
    assert report.params_before == report.params_after
    assert report.sparsity_before == 0.0 and report.sparsity_after > 0.3
    assert any("no speed-up" in note for note in report.notes)
    # the pruned weights load into the user's own architecture
    fresh = TinyConvNet()
    fresh.load_state_dict(pruned.state_dict())
    x = TinyConvNet.example_inputs()
    torch.testing.assert_close(fresh.eval()(x), pruned.eval()(x))


@pytest.mark.parametrize("name", PERFKIT_MODELS)
def test_channel_pruning_shrinks_perfkit_models(name: str) -> None:
    model = PERFKIT_MODELS[name]().eval()
    before = snapshot(model)
    x = torch.randn(2, *DIGIT)
    pruned = prune(model, amount=0.5, method="channels", example_inputs=x[:1])
    assert_untouched(model, before)
    assert pruned(x).shape == (2, 10)  # the output layer keeps its size
    report = reports(pruned)[-1]
    # the first layer keeps its inputs (pixels), so the MLP keeps more; vit keeps its attention widths
    kept = {"cnn": 0.4, "resnet18": 0.4, "mlp": 0.5, "vit": 0.8}[name]
    assert report.params_after < kept * report.params_before
    assert report.size_bytes_after < report.size_bytes_before
    assert sum(report.changed.values()) > 0
    torch.testing.assert_close(round_trip(pruned)(x), pruned(x))


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_channel_pruning_on_user_models(name: str) -> None:
    model = TOY_MODELS[name]().eval()
    x = model.example_inputs()  # type: ignore[operator]
    pruned = prune(model, amount=0.5, method="channels", example_inputs=x[:1])
    assert pruned(x).shape == model(x).shape
    assert reports(pruned)[-1].params_after < reports(pruned)[-1].params_before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 1.0}, r"amount must be a number in \[0, 1\), got 1.0"),
        ({"amount": -0.1}, r"amount must be a number in \[0, 1\)"),
        ({"amount": "half"}, r"amount must be a number in \[0, 1\)"),
        (
            {"amount": 0.5, "method": "l3"},
            "unknown pruning method 'l3'; allowed: l1_unstructured, random_unstructured",
        ),
        ({"amount": 0.5, "method": "channels"}, "method='channels' needs example_inputs"),
    ],
)
def test_prune_errors_say_what_is_allowed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prune(TinyMLP(), **kwargs)  # type: ignore[arg-type]


def test_channel_pruning_that_removes_nothing_says_so() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.warns(
        UserWarning, match="nothing removed: amount=0.99 would leave layers with less than one"
    ):
        pruned = prune(model, method="channels", amount=0.99, example_inputs=torch.randn(2, 8))
    (report,) = reports(pruned)
    assert not report.changed and report.notes[0].startswith("nothing removed")
    assert not any("smaller and faster" in note for note in report.notes)


@pytest.mark.hostile
def test_prune_reports_the_sparsity_of_every_weight_matrix_and_lists_what_it_left() -> None:
    from torchvision.models import VisionTransformer

    from perfkit.optim.report import weight_matrices

    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    pruned = perfkit.prune(vit, amount=0.5)
    report = perfkit.optim.reports(pruned)[-1]
    matrices = weight_matrices(pruned)
    actual = sum(int((m == 0).sum()) for m in matrices) / sum(m.numel() for m in matrices)
    assert report.sparsity_after == pytest.approx(actual)
    assert report.changed["MultiheadAttention"] == 2  # in_proj_weight is pruned too
    assert all(
        float((a.in_proj_weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
        for a in (m for m in pruned.modules() if isinstance(m, nn.MultiheadAttention))
    )
    assert set(report.skipped) == {"LayerNorm", "Encoder", "VisionTransformer"}  # class token, positions
