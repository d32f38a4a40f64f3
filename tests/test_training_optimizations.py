"""perfkit.optim.training: the registered optimizations inside Lightning training, driven by `optimize.*` keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelPruning

from perfkit.models import ImageClassifier, SmallCNN
from perfkit.optim.training import CompileForward, PruneChannels, TrainingOptimizations
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain, run_cli, run_failure

TWO_EPOCHS = [*FAST, "logger=none", "trainer.max_epochs=2"]


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]  # type: ignore[no-any-return]


def test_defaults_change_nothing() -> None:
    optimizations = TrainingOptimizations.from_config(None)
    assert not optimizations.prunes and not optimizations.compile
    assert optimizations.callbacks(SmallCNN((1, 8, 8), 10)) == []


def test_config_chooses_the_callbacks() -> None:
    model = SmallCNN((1, 8, 8), 10)
    masks = TrainingOptimizations.create(prune_amount=0.3, compile=True).callbacks(model)
    assert [type(c).__bases__[0] if type(c).__name__.startswith("_") else type(c) for c in masks] == [
        ModelPruning,
        CompileForward,
    ]
    channels = TrainingOptimizations.create(prune_amount=0.3, prune_method="channels").callbacks(model)
    assert [type(c) for c in channels] == [PruneChannels]


def test_mask_pruning_then_fine_tuning_saves_clean_checkpoints(
    compose_train: ComposeTrain, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    metrics = train(compose_train(*TWO_EPOCHS, "optimize.prune.amount=0.5", output_dir=run_dir))
    assert metrics["optimize"]["prune"]["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["evaluated"] == "final weights"
    for checkpoint in ("best.ckpt", "last.ckpt"):
        state = _state_dict(run_dir / "checkpoints" / checkpoint)
        assert not any(key.endswith(("_orig", "_mask")) for key in state)
    # the final checkpoint loads into the plain architecture and is 50% zeros
    model = ImageClassifier(SmallCNN, (1, 28, 28), 10)
    model.load_state_dict(_state_dict(run_dir / "checkpoints" / "last.ckpt"))
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("at_epoch", [0, 1])
def test_channel_pruning_during_training(compose_train: ComposeTrain, tmp_path: Path, at_epoch: int) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train(
        *TWO_EPOCHS,
        "optimize.prune.amount=0.5",
        "optimize.prune.method=channels",
        f"optimize.prune.at_epoch={at_epoch}",
        output_dir=run_dir,
    )
    metrics = train(cfg)
    assert metrics["parameters"] < 0.3 * 421_642  # 0.4M dense
    assert metrics["optimizer_steps"] == 10 and metrics["test"]["acc"] > 0.1
    state = _state_dict(run_dir / "checkpoints" / "last.ckpt")
    assert sum(t.numel() for k, t in state.items() if k.startswith("net.")) == metrics["parameters"]


def test_pruning_epoch_beyond_the_run_is_refused(compose_train: ComposeTrain) -> None:
    from perfkit.config import ConfigError

    cfg = compose_train(*FAST, "logger=none", "optimize.prune.amount=0.5", "optimize.prune.at_epoch=1")
    with pytest.raises(
        ConfigError, match=r"at_epoch=1 is never reached: trainer.max_epochs=1 runs epochs 0..0"
    ):
        train(cfg)


@pytest.mark.slow
def test_compiled_training_matches_eager(compose_train: ComposeTrain, tmp_path: Path) -> None:
    eager = train(compose_train(*TWO_EPOCHS, output_dir=tmp_path / "eager"))
    compiled = train(compose_train(*TWO_EPOCHS, "optimize.compile=true", output_dir=tmp_path / "compiled"))
    assert compiled["optimize"]["compile"] is True and compiled["optimize"]["compile_mode"] == "default"
    assert compiled["optimize"]["compiled_graphs_per_rank"][0] >= 1
    assert compiled["optimize"]["fell_back_to_eager"] is None
    # the same computation, fused differently: equal up to float rounding
    assert compiled["test"]["loss"] == pytest.approx(eager["test"]["loss"], rel=1e-3)
    assert compiled["test"]["acc"] == pytest.approx(eager["test"]["acc"], abs=0.01)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "optimize",
    [
        ["optimize.compile=true"],
        ["optimize.prune.amount=0.5", "optimize.prune.method=channels", "optimize.prune.at_epoch=0"],
        ["optimize.prune.amount=0.5"],
    ],
    ids=["compile", "channels", "masks"],
)
def test_optimizations_under_ddp(tmp_path: Path, optimize: list[str]) -> None:
    code, _, err = run_cli(
        *TWO_EPOCHS, "strategy=ddp", "devices=2", *optimize, "hydra.run.dir=run", cwd=tmp_path
    )
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["test"]["acc"] > 0.1
    if "optimize.prune.amount=0.5" in optimize:
        assert "prune" in metrics["optimize"]
    if "optimize.compile=true" in optimize:
        # every rank ran dynamo-compiled graphs: DDP's wrapper did not lose the compiled forward
        graphs = metrics["optimize"]["compiled_graphs_per_rank"]
        assert len(graphs) == 2 and min(graphs) >= 1, graphs
        assert metrics["optimize"]["fell_back_to_eager"] is None


@pytest.mark.slow  # a fresh interpreter (~10 s): in the slow stage, which CI runs
def test_late_channel_pruning_under_ddp_is_refused_before_starting(tmp_path: Path) -> None:
    args = ["optimize.prune.amount=0.5", "optimize.prune.method=channels", "optimize.prune.at_epoch=1"]
    code, _, err = run_cli(*TWO_EPOCHS, "strategy=ddp", "devices=2", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "perfkit.train: error: optimize.prune.at_epoch=1 with method=channels needs one process (world size is 2); "
        "use optimize.prune.at_epoch=0 to prune before DDP starts"
    )
    assert not (tmp_path / "run" / "metrics.json").exists()
