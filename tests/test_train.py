"""The training entry point: end to end runs, outputs, reproducibility, refusal to overwrite, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfkit.config import ConfigError
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain, run_cli, run_failure


def test_train_writes_every_output(compose_train: ComposeTrain, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = train(compose_train(*FAST, output_dir=run_dir))

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test"] == pytest.approx(metrics["test"])
    for split in ("val", "test"):
        assert set(saved[split]) == {"acc", "loss"} and 0 <= saved[split]["acc"] <= 1
    assert saved["world_size"] == 1 and saved["device"] == "cpu"
    assert saved["train_samples_per_s"] > 0 and len(saved["epoch_times_s"]) == 1
    assert saved["train_samples_per_epoch"] == [5 * 64]
    assert saved["optimizer_steps"] == 5
    assert {"torch", "lightning", "perfkit"} <= set(saved["versions"])
    assert saved["best_checkpoint"] == "checkpoints/best.ckpt"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "MNISTDataModule" in (run_dir / "config.yaml").read_text()  # resolved config


@pytest.mark.slow  # two training runs
def test_same_seed_same_numbers(compose_train: ComposeTrain, tmp_path: Path) -> None:
    first = train(compose_train(*FAST, "logger=none", output_dir=tmp_path / "a"))
    second = train(compose_train(*FAST, "logger=none", output_dir=tmp_path / "b"))
    assert first["val"] == second["val"] and first["test"] == second["test"]
    third = train(compose_train(*FAST, "logger=none", "seed=7", output_dir=tmp_path / "c"))
    assert third["val"] != first["val"]


def test_a_finished_run_is_never_overwritten(compose_train: ComposeTrain, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(compose_train(*FAST, "logger=none", output_dir=run_dir))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds an earlier run"):
        train(compose_train(*FAST, "logger=none", "model=mlp", output_dir=run_dir))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_runs_without_callbacks_or_loggers(compose_train: ComposeTrain, tmp_path: Path) -> None:
    metrics = train(compose_train(*FAST, "callbacks=none", "logger=none", "data=digits"))
    # Lightning still keeps its default checkpoint of the last epoch
    assert metrics["best_checkpoint"] == "checkpoints/epoch=0-step=5.ckpt"
    assert 0 <= metrics["test"]["acc"] <= 1
    no_checkpoints = compose_train(
        *FAST,
        "callbacks=none",
        "logger=none",
        "+trainer.enable_checkpointing=false",
        output_dir=tmp_path / "b",
    )
    metrics = train(no_checkpoints)
    assert metrics["best_checkpoint"] is None and 0 <= metrics["test"]["acc"] <= 1


def test_users_own_datamodule_plugs_in_through_target(
    compose_train: ComposeTrain, image_folder: Path
) -> None:
    metrics = train(
        compose_train(
            *FAST, "logger=csv", "data=imagefolder", f"data.root={image_folder}", "data.image_size=16"
        )
    )
    assert metrics["test"]["acc"] >= 0


# Errors perfkit reports (checked in-process: no interpreter start-up per case)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc' is not valid: expected int"]),
        (["devices=-3"], ["devices=-3 is not valid", "positive count"]),
        (["data=imagefolder"], ["data.root"]),
        (
            ["data=imagefolder", "data.root=/no/such/dir"],
            ["data: data.root='/no/such/dir' is not a directory"],
        ),
        (["accelerator=cuda"], ["CUDAAccelerator", "not available"]),
    ],
)
def test_cli_bad_input_is_a_short_message_not_a_traceback(cli, args: list[str], expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    code, err = cli(*FAST, *args)
    assert code == 2
    assert err.startswith("perfkit.train: error: ") and len(err.strip().splitlines()) == 1
    for text in expected:
        assert text in err


# Errors Hydra reports while composing. They run in a real interpreter: Hydra re-raises instead of
# printing when a trace function (coverage's) is active.
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=nope"], ["Could not find 'model/nope'", "cnn", "mlp", "resnet18", "vit"]),
        (["strategy=horovod"], ["Could not find 'strategy/horovod'", "ddp", "ddp_spawn"]),
        (["trainer.max_epoch=3"], ["trainer.max_epoch", "not in struct"]),
    ],
)
def test_cli_composition_errors_list_what_is_allowed(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    code, _, err = run_cli(*args, "hydra.run.dir=run", cwd=tmp_path)
    assert code == 1
    for text in expected:
        assert text in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 15
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a fresh interpreter (~10 s): in the slow stage, which CI runs
def test_cli_runs_from_another_directory(tmp_path: Path) -> None:
    """After `pip install -e .` the configs are found from any working directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = run_cli(*FAST, "logger=none", "hydra.run.dir=run", cwd=elsewhere)
    assert code == 0, run_failure(err)
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["world_size"] == 1


def test_cli_refuses_an_occupied_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"keep": true}')
    code, _, err = run_cli(*FAST, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [
        f"perfkit.train: error: {run_dir} already holds an earlier run (metrics.json); perfkit never "
        "overwrites one: choose a new directory with hydra.run.dir=... or remove the old run"
    ]
    assert json.loads((run_dir / "metrics.json").read_text()) == {"keep": True}
    assert not (run_dir / "config.yaml").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "mlp", "resnet18", "vit"])
def test_every_model_learns(compose_train: ComposeTrain, model: str) -> None:
    # ResNet-18 keeps 28x28 resolution in its first stage: ~3 s a step at batch 64 on 2 cores
    batch_size = 16 if model == "resnet18" else 64
    cfg = compose_train(
        *FAST,
        "logger=none",
        f"model={model}",
        f"data.batch_size={batch_size}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=15",
        "trainer.limit_val_batches=4",
        "trainer.limit_test_batches=4",
    )
    metrics = train(cfg)
    assert metrics["test"]["acc"] > 0.3, metrics  # chance is 0.1 after 30 steps
    assert metrics["optimizer_steps"] == 30


@pytest.mark.slow
def test_default_job_reaches_the_accuracy_target(tmp_path: Path) -> None:
    """The README's job, unchanged: real digits, >= 0.95 validation accuracy."""
    code, _, err = run_cli("hydra.run.dir=run", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val"]["acc"] >= 0.95 and metrics["test"]["acc"] >= 0.93
    assert metrics["epochs"] == 5


@pytest.mark.distributed
def test_ddp_on_cpu_from_the_command_line(tmp_path: Path) -> None:
    code, _, err = run_cli(
        *FAST, "strategy=ddp", "devices=2", "logger=none", "hydra.run.dir=run", cwd=tmp_path
    )
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["strategy"] == "DDPStrategy"
    assert metrics["train_samples_per_epoch"] == [2 * 5 * 64]  # both ranks counted
    # rank 0 alone writes the run's files
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoints",
        "config.yaml",
        "metrics.json",
        "metrics.md",
        "train.log",
    ]


def test_wandb_logs_offline_without_key_or_network(
    compose_train: ComposeTrain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the config's own offline flag must suffice: no WANDB_MODE, no API key
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    train(compose_train(*FAST, "logger=wandb", output_dir=run_dir))
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("run-*.wandb"))
    assert "Traceback" not in (run_dir / "wandb" / "debug.log").read_text()


# Degenerate runs: refused before anything trains, in one line (issue 28)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
        (["trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
        (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 trains nothing"),
        (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0 trains nothing"),
        (
            ["trainer.min_epochs=5", "trainer.max_epochs=2"],
            "trainer.min_epochs=5 and trainer.max_epochs=2 contradict",
        ),
        (["data.val_fraction=0"], "data.val_fraction=0 leaves an empty val split"),
        (["data.test_fraction=0"], "data.test_fraction=0 leaves an empty test split"),
        (["data.eval_batch_size=-1"], "data: eval_batch_size must be >= 1"),
        (["model.label_smoothing=2.0"], "model: label_smoothing must be in [0, 1], got 2.0"),
        (["hydra.run.dir="], "hydra.run.dir= is empty (an unset shell variable?)"),
        (
            ["trainer.val_check_interval=1000", "debug=fast"],
            "trainer.val_check_interval=1000: `val_check_interval` (1000)",
        ),
    ],
)
def test_degenerate_runs_are_refused_in_one_line(cli, args: list[str], expected: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    extra = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={tmp_path / 'r'}"]
    code, err = cli(*args, *extra, "logger=none", "accelerator=cpu")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert expected in line and "Traceback" not in err, line
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precisions_train(cli, precision: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, err = cli(f"precision={precision}", "debug=fast", "logger=none", "accelerator=cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["precision"] == precision
