"""Hydra sweeps: the summary table, a failing job that does not stop the sweep, Optuna and submitit."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from perfkit.sweep import collect_rows, write_summary
from tests.helpers import FAST, run_cli, run_failure


def _job(
    sweep: Path,
    num: int,
    overrides: list[str],
    status: str = "done",
    metrics: dict | None = None,
    monitor: tuple[str, str] | None = None,
) -> None:
    job_dir = sweep / str(num)
    job_dir.mkdir(parents=True)
    error = "ValueError: Invalid learning rate: -1" if status == "failed" else None
    (job_dir / "job.json").write_text(
        json.dumps({"job": num, "overrides": overrides, "status": status, "error": error, "monitor": monitor})
    )
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics))


def test_summary_has_one_row_per_job_with_swept_values_and_results(tmp_path: Path) -> None:
    base = ["debug=fast"]
    _job(
        tmp_path,
        10,
        [*base, "optimizer.lr=0.01"],
        metrics={"val": {"acc": 0.9, "loss": 0.3}, "test": {"acc": 0.88}},
    )
    _job(
        tmp_path,
        2,
        [*base, "optimizer.lr=0.1"],
        metrics={"val": {"acc": 0.95}, "train_samples_per_s": 1234.5},
    )
    _job(tmp_path, 3, [*base, "optimizer.lr=-1"], status="failed")
    (tmp_path / "4").mkdir()  # still running: no row yet

    rows = write_summary(tmp_path)
    assert [r["job"] for r in rows] == [2, 3, 10]  # numeric order, not 10 before 2
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    with (tmp_path / "summary.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["optimizer.lr"] for row in table] == ["0.1", "-1", "0.01"]
    assert table[0]["val_acc"] == "0.95" and table[0]["train_samples_per_s"] == "1234.5"
    assert table[1]["error"] == "ValueError: Invalid learning rate: -1" and table[1]["val_acc"] == ""

    markdown = (tmp_path / "summary.md").read_text()
    assert "Best val/acc (max): job 2 (0.9500)." in markdown
    assert "Every job: `debug=fast`" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| job"))
    assert "optimizer.lr" in header and "debug" not in header


def test_the_best_job_follows_the_monitored_metric_and_mode(tmp_path: Path) -> None:
    loss = ("val/loss", "min")
    _job(tmp_path, 0, ["optimizer.lr=0.1"], metrics={"val": {"acc": 0.95, "loss": 0.4}}, monitor=loss)
    _job(tmp_path, 1, ["optimizer.lr=0.01"], metrics={"val": {"acc": 0.90, "loss": 0.2}}, monitor=loss)
    write_summary(tmp_path)
    assert "Best val/loss (min): job 1 (0.2000)." in (tmp_path / "summary.md").read_text()


def test_no_finished_job_means_no_summary(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    assert write_summary(tmp_path) == [] and not (tmp_path / "summary.md").exists()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "job.json").write_text("{not json")
    assert collect_rows(tmp_path) == []


@pytest.mark.slow
def test_multirun_writes_the_summary_and_survives_a_failing_job(tmp_path: Path) -> None:
    # a learning rate that diverges fails its job while running (a negative one is refused up front)
    code, _, err = run_cli(
        "-m",
        *FAST,
        "logger=none",
        "optimizer=sgd",
        "optimizer.lr=1e12,0.01",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert code == 1  # a job failed
    assert "sweep: 1 of 2 jobs failed (jobs 0)" in err
    rows = collect_rows(tmp_path / "sweep")
    assert [(r["optimizer.lr"], r["status"]) for r in rows] == [
        ("1000000000000.0", "failed"),
        ("0.01", "done"),
    ]
    assert "training diverged" in rows[0]["error"]
    assert rows[1]["val_acc"] is not None and rows[1]["train_samples_per_s"] > 0
    assert (tmp_path / "sweep" / "summary.md").is_file()


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported; find_spec of a dotted name raises when its parent is missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_optuna = pytest.mark.skipif(
    not _installed("hydra_plugins.hydra_optuna_sweeper"),
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[sweep]')",
)
needs_submitit = pytest.mark.skipif(
    not _installed("hydra_plugins.hydra_submitit_launcher"),
    reason="hydra-submitit-launcher is not installed (pip install -e '.[sweep]')",
)


@needs_optuna
@pytest.mark.slow
def test_optuna_search_runs_trials_and_summarises_them(tmp_path: Path) -> None:
    code, out, err = run_cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *FAST,
        "logger=none",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert code == 0, run_failure(err)
    assert "Best value:" in out + err
    rows = collect_rows(tmp_path / "sweep")
    assert len(rows) == 2 and all(r["status"] == "done" and r["val_acc"] is not None for r in rows)
    assert {"optimizer.lr", "data.batch_size", "model.net.dropout"} <= set(rows[0])


@needs_submitit
def test_slurm_launcher_sizes_jobs_from_the_run() -> None:
    launcher = _launcher_config(["hydra/launcher=slurm", "strategy=ddp", "devices=4", "num_nodes=2"])
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["max_num_timeout"] > 0  # requeued after a time-out; resume=auto continues


def _launcher_config(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from perfkit.config import compose_config

    cfg = compose_config("train", overrides, with_hydra=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # type: ignore[return-value]


@needs_submitit
@pytest.mark.slow
def test_submitit_sweep_writes_the_summary(tmp_path: Path) -> None:
    """The submitit launcher (local executor: no SLURM here) runs jobs in their own processes."""
    code, _, err = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        *FAST,
        "logger=none",
        "data.batch_size=32,64",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert code == 0, run_failure(err)
    rows = collect_rows(tmp_path / "sweep")
    assert [(r["data.batch_size"], r["status"]) for r in rows] == [("32", "done"), ("64", "done")]


@needs_optuna
def test_the_optuna_direction_follows_monitor_mode() -> None:
    from omegaconf import OmegaConf

    from perfkit.config import compose_config

    for mode, direction in (("max", "maximize"), ("min", "minimize")):
        cfg = compose_config(
            "train", ["hparams_search=optuna", "monitor=val/loss", f"monitor_mode={mode}"], with_hydra=True
        )
        assert OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)["direction"] == direction  # type: ignore[index]


def test_a_sweep_directory_is_reserved_like_a_run_directory(tmp_path: Path) -> None:
    """Two sweeps started in the same second get two directories (-2), as runs do."""
    import perfkit.run
    from perfkit.config import compose_config

    made = []
    for _ in range(2):
        perfkit.run._fresh_dirs.clear()  # a second process: nothing cached
        cfg = compose_config("train", [f"paths.log_dir={tmp_path}"], with_hydra=True)
        made.append(str(cfg.hydra.sweep.dir))
    perfkit.run._fresh_dirs.clear()
    assert made[0] != made[1] and all(Path(d).is_dir() for d in made)  # -2 within one second
    assert all(Path(d).parent == tmp_path / "train" / "multiruns" for d in made)


def test_a_finished_sweep_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    _job(tmp_path / "sweep", 0, ["optimizer.lr=0.01"], metrics={"val": {"acc": 0.9}})
    write_summary(tmp_path / "sweep")
    before = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    code, _, err = run_cli(
        "-m", *FAST, "logger=none", "optimizer.lr=0.01,0.02", "hydra.sweep.dir=sweep", cwd=tmp_path
    )
    assert code == 2 and "already holds a sweep (summary.csv)" in err and "Traceback" not in err
    after = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    assert after == before
