"""Hydra sweeps: one summary row per job, rewritten as each job ends.

``python -m perfkit.train -m data.batch_size=32,64 optimizer.lr=1e-3,3e-3`` (or an Optuna sweep, see
``configs/hparams_search/``) writes ``summary.csv`` and ``summary.md`` into the sweep directory: each
job's overrides as columns, its status and its results from ``metrics.json``. A failed job is a row
with its error and does not stop the sweep; the sweep then exits with status 1.

:class:`SweepSummary` is a Hydra callback (``hydra.callbacks`` in ``configs/hydra/default.yaml``); it
runs where the job runs (a SLURM node under the submitit launcher) and again where the sweep ends, and
only reads the sweep directory, so both agree.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from perfkit.config import task_overrides
from perfkit.errors import first_line
from perfkit.reporting import markdown_table
from perfkit.run import is_launching_process, write_json

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
# a row's monitored metric and mode: not a column of the summary
_MONITOR = "_monitor"
_RESULTS = (
    ("val_acc", ("val", "acc")),
    ("val_loss", ("val", "loss")),
    ("test_acc", ("test", "acc")),
    ("train_samples_per_s", ("train_samples_per_s",)),
    ("wall_time_s", ("wall_time_s",)),
)

_RESULT_COLUMNS = [*(name for name, _ in _RESULTS), "error", "run_dir"]


def in_sweep() -> bool:
    """True inside a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(message: str, *, final: bool = False) -> None:
    """Mark the current sweep job as failed, with one line saying why, for its summary row.

    ``final``: the process exits now (Hydra's job-end callbacks will not run), so write the row and
    the summary here.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / ".failure.json", {"error": message})
    if final and _status(output_dir) != "done":  # a finished job's record is never rewritten
        job = {
            "job": hydra_cfg.job.num,
            "overrides": task_overrides(),
            "status": "failed",
            "error": message,
        }
        write_json(output_dir / JOB_FILE, job)
        write_summary(Path(hydra_cfg.sweep.dir))


def _status(job_dir: Path) -> str | None:
    job = _read_json(job_dir / JOB_FILE)
    return job.get("status") if job else None


class SweepSummary(Callback):
    """Rewrite ``summary.csv`` and ``summary.md`` in the sweep directory after every job."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:

        if not in_sweep() or not is_launching_process():  # one row per job, not per rank
            return
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus

        hydra_cfg = HydraConfig.get()
        output_dir = Path(hydra_cfg.runtime.output_dir)
        failure = _read_json(output_dir / ".failure.json")
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            failure = {"error": first_line(error, typed=True)}
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            output_dir / JOB_FILE,
            {
                "job": hydra_cfg.job.num,
                "overrides": list(job_return.overrides or []),
                "status": "failed" if failure else "done",
                "error": failure.get("error") if failure else None,
                "monitor": [str(config.get("monitor", "val/acc")), str(config.get("monitor_mode", "max"))],
            },
        )
        write_summary(Path(hydra_cfg.sweep.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # before any job: a job refused later would already have rewritten the old sweep's summary
        sweep_dir = Path(str(config.hydra.sweep.dir))
        finished = finished_sweep(sweep_dir)
        if finished:
            print(
                f"perfkit: error: {sweep_dir} already holds a sweep ({finished}); perfkit never overwrites one: "
                "choose a new directory with hydra.sweep.dir=... or remove the old sweep",
                file=sys.stderr,
            )
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if not rows:
            return
        failed = [row for row in rows if row["status"] != "done"]
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(rows))
        if failed:
            print(
                f"sweep: {len(failed)} of {len(rows)} jobs failed (jobs {', '.join(str(r['job']) for r in failed)}); "
                f"see {sweep_dir / 'summary.md'}",
                file=sys.stderr,
            )
            sys.exit(1)


def finished_sweep(sweep_dir: Path) -> str | None:
    """What in ``sweep_dir`` shows an earlier sweep ran there (its summary, a job's record or results)."""
    if (sweep_dir / "summary.csv").exists():
        return "summary.csv"
    for pattern in (f"*/{JOB_FILE}", "*/metrics.json", "*/checkpoints/*.ckpt"):
        found = next(iter(sorted(sweep_dir.glob(pattern))), None)
        if found is not None:
            return str(found.relative_to(sweep_dir))
    return None


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory that recorded its end (``job.json``), ordered by job number."""
    rows = []
    for job_file in sweep_dir.glob(f"*/{JOB_FILE}"):
        job = _read_json(job_file)
        if job is None:
            continue
        metrics = _read_json(job_file.parent / "metrics.json") or {}
        row: dict[str, Any] = {"job": job.get("job"), "status": job.get("status", "done")}
        for override in job.get("overrides", []):
            key, _, value = str(override).partition("=")
            row[key.lstrip("+~")] = value
        for column, path in _RESULTS:
            row[column] = _dig(metrics, path)
        monitor, mode = job.get("monitor") or ("val/acc", "max")
        row[_column(monitor)] = _dig(metrics, ("val", monitor.removeprefix("val/")))
        row[_MONITOR] = (monitor, mode)
        row["error"] = job.get("error") or ""
        row["run_dir"] = job_file.parent.name
        rows.append(row)
    return sorted(rows, key=lambda r: (r["job"] is None, r["job"]))


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` from the job directories; return the rows."""
    rows = collect_rows(sweep_dir)
    if not rows:
        return rows
    columns = _columns(rows)
    temporary = sweep_dir / ".summary.csv.tmp"
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: _plain(row.get(c)) for c in columns} for row in rows)
    temporary.replace(sweep_dir / "summary.csv")
    (sweep_dir / "summary.md").write_text(to_markdown(rows, columns))
    return rows


def to_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The table of the jobs; overrides every job shares are listed once above it (the CSV has all)."""
    results = {"job", "status", _column(rows[0][_MONITOR][0]), *_RESULT_COLUMNS}
    shared = [
        c
        for c in columns
        if c not in results and len({str(row.get(c)) for row in rows}) == 1 and len(rows) > 1
    ]
    shown = [
        c for c in columns if c not in shared and (c != "error" or any(row.get("error") for row in rows))
    ]
    best = _best(rows)
    monitor, mode = rows[0][_MONITOR]
    lines = [
        f"# Sweep summary ({len(rows)} jobs)",
        "",
        f"Best {monitor} ({mode}): job {best['job']} ({best[_column(monitor)]:.4f})."
        if best
        else f"No job finished with a {monitor}.",
        "",
    ]
    if shared:
        lines += ["Every job: " + " ".join(f"`{c}={rows[0].get(c)}`" for c in shared), ""]
    lines += markdown_table(
        shown,
        ([_cell(row.get(c)) for c in shown] for row in rows),
        right=[i for i, c in enumerate(shown) if _numeric(rows, c)],
    )
    return "\n".join(lines) + "\n"


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    fixed = ["job", "status"]
    trailing = list(dict.fromkeys([_column(rows[0][_MONITOR][0]), *_RESULT_COLUMNS]))
    swept: list[str] = []
    for row in rows:
        swept += [key for key in row if key not in (*fixed, *trailing, _MONITOR) and key not in swept]
    return fixed + swept + trailing


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job with the best value of the monitored metric (``monitor``, ``monitor_mode``)."""
    monitor, mode = rows[0][_MONITOR]
    column = _column(monitor)
    scored = [r for r in rows if isinstance(r.get(column), int | float)]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[column])


def _column(monitor: str) -> str:
    """The summary column of a metric: ``val/acc`` -> ``val_acc``."""
    return monitor.replace("/", "_")


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) not in (None, "")]
    return bool(values) and all(isinstance(v, int | float) for v in values)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plain(value: Any) -> Any:
    return "" if value is None else value


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
