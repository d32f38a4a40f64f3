"""perfkit's Lightning callbacks: the throttled progress bar and the training clock."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from perfkit.callbacks import RichBar, TQDMBar, TrainingSpeed, add_progress_bar
from perfkit.data import DigitsDataModule
from perfkit.models import MLP, ImageClassifier
from tests.helpers import (
    CLI,
    FAST,
)
from tests.helpers.checks import one_line_error


def _fit(*callbacks: L.Callback, batches: int = 20) -> L.Trainer:
    model = ImageClassifier(MLP, (1, 8, 8), 10)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        callbacks=list(callbacks),
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    return trainer


@pytest.mark.parametrize("bar_type", [TQDMBar, RichBar])
def test_the_bar_reads_metrics_only_when_a_refresh_is_due(
    bar_type: type[ProgressBar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the logged metrics is a host sync on a GPU: not on every step."""
    reads: list[bool] = []
    read_metrics = ProgressBar.get_metrics

    def counting(self: ProgressBar, trainer: L.Trainer, module: L.LightningModule) -> dict[str, object]:
        reads.append(trainer.training)
        return read_metrics(self, trainer, module)

    monkeypatch.setattr(ProgressBar, "get_metrics", counting)
    _fit(bar_type(refresh_s=0.0))  # type: ignore[call-arg]
    every_step = reads.count(True)
    reads.clear()
    trainer = _fit(bar_type(refresh_s=3600.0))  # type: ignore[call-arg]
    # the first and the last batch, and the epoch's end
    assert every_step >= 20 and reads.count(True) <= 4
    # what the bar shows: the step loss at the loggers' cadence, the epoch's loss and accuracies
    assert {"train/loss_step", "train/loss_epoch", "train/acc", "val/acc", "val/loss"} <= set(
        trainer.progress_bar_metrics
    )


def test_one_progress_bar_unless_the_run_shows_none() -> None:
    callbacks: list[L.Callback] = []
    add_progress_bar(callbacks, enabled=True)
    assert len(callbacks) == 1 and isinstance(callbacks[0], RichBar | TQDMBar)
    own: list[L.Callback] = [TQDMProgressBar()]
    add_progress_bar(own, enabled=True)
    assert len(own) == 1 and type(own[0]) is TQDMProgressBar
    none: list[L.Callback] = []
    add_progress_bar(none, enabled=False)
    assert none == []


def test_training_speed_times_the_first_step_and_the_fit() -> None:
    speed = TrainingSpeed(launched_at=time.time() - 100.0)
    _fit(speed, batches=6)
    summary = speed.summary(world_size=1)
    assert 100.0 <= summary["time_to_first_step_s"] < 200.0
    assert summary["fit_time_s"] > 0 and sum(summary["epoch_times_s"]) <= summary["fit_time_s"]
    assert summary["train_samples_per_epoch"] == [6 * 16]
    library_call = TrainingSpeed()  # no launch time: nothing to report
    _fit(library_call, batches=2)
    assert library_call.summary(world_size=1)["time_to_first_step_s"] is None


class _SlowAfterValidation(L.Callback):
    """What the best checkpoint does: work after validation, in a callback that runs after ours."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            time.sleep(0.3)


def test_training_speed_leaves_out_what_runs_when_validation_ends() -> None:
    speed = TrainingSpeed()
    trainer = _fit(speed, _SlowAfterValidation(), batches=3)
    assert trainer.current_epoch == 1
    (epoch_s,) = speed.epoch_times_s
    assert epoch_s < 0.3 <= speed.fit_time_s  # type: ignore[operator]


@pytest.mark.hostile
# --- divergence: stopped, said, never NaN in JSON ----------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [["optimizer=sgd", "optimizer.lr=1e12"], ["optimizer.lr=1e6"]],
    ids=["sgd-nan", "adamw-explodes"],
)
def test_a_diverging_run_stops_with_one_line_and_status_1(cli: CLI, tmp_path: Path, args: list[str]) -> None:
    run_dir = tmp_path / "diverged"
    code, err = cli(*FAST, "logger=none", "trainer.limit_train_batches=30", *args, f"hydra.run.dir={run_dir}")
    one_line_error(code, err, "training diverged", "optimizer.lr", status=1)
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # a diverged model is never "best"


@pytest.mark.hostile
def test_the_divergence_check_does_not_sync_every_step() -> None:
    from types import SimpleNamespace

    from perfkit.callbacks import DivergedError, DivergenceCheck

    check = DivergenceCheck()
    trainer = SimpleNamespace(
        log_every_n_steps=10, is_last_batch=False, world_size=1, current_epoch=0, global_step=3
    )
    for step, loss in enumerate([2.3, 2.2, float("nan"), 2.1]):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, step)  # type: ignore[arg-type]
    trainer.is_last_batch = True
    with pytest.raises(DivergedError, match="NaN"):
        check.on_train_batch_end(trainer, None, torch.tensor(2.0), None, 4)  # type: ignore[arg-type]
