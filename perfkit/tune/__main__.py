"""``python -m perfkit.tune [group=option ...] [key=value ...]``: the tuner on a composed training config.

Builds the datamodule and model exactly as ``perfkit.train`` would, runs :class:`perfkit.tune.Tuner`
within ``tune.budget_s``, and writes ``tune.json``, ``tune.md``, ``tune.png`` and
``configs/experiment/tuned.yaml`` into the run directory.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit.build import build
from perfkit.cli import command, run_program
from perfkit.config import check_config, fit_to_targets, typed_node
from perfkit.evaluation import monitored_value
from perfkit.run import RunDirectory
from perfkit.tune import Tuner, TuneSettings, progress_bar, write_outputs
from perfkit.tune.candidates import train_config_keys
from perfkit.tune.report import train_command
from perfkit.tune.runs import Score
from perfkit.tune.selection import TuneInterrupted

log = logging.getLogger("perfkit.tune")


def run(cfg: DictConfig) -> Any:
    """Tune the job ``cfg`` describes; return the :class:`~perfkit.tune.TuneResult`."""
    for line in fit_to_targets(cfg):
        log.info(line)
    check_config(cfg)
    import lightning as L

    settings: TuneSettings = typed_node(cfg, "tune")
    run_dir = Path(cfg.paths.output_dir)
    RunDirectory(run_dir, precious=("tune.json",))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    with progress_bar() as report_progress:
        tuner = Tuner(
            model,
            datamodule,
            settings,
            progress=report_progress,
            monitor=str(cfg.get("monitor", "val/acc")),
            monitor_mode=str(cfg.get("monitor_mode", "max")),
        )
        try:
            result = tuner.run()
        except TuneInterrupted as stop:
            if stop.result is not None:
                done = sum(o.status != "skipped" for o in stop.result.outcomes)
                kept = write_outputs(stop.result, run_dir)
                log.warning("interrupted: %d measured candidates kept in %s", done, kept[0])
            raise KeyboardInterrupt from None
    failed = [o for o in result.outcomes if o.status == "failed"]
    for outcome in failed:
        c = outcome.candidate
        log.warning("%s candidate %s=%s failed: %s", c.mode, c.axis, c.name, outcome.reason)
    written = write_outputs(result, run_dir)  # kept even when every candidate failed
    check_some_worked(result)
    verify_full_run(cfg, result, run_dir)
    written = write_outputs(result, run_dir)
    for mode, keys in result.chosen.items():
        final = result.final.get(mode)
        measured = f" ({final.speedup:.2f}x the defaults, side by side)" if final and final.speedup else ""
        log.info("%s: %s%s", mode, keys or "keep the defaults", measured)
    log.info("report: %s; train with: %s", written[1], train_command(run_dir))
    return result


def check_some_worked(result: Any) -> None:
    """A mode whose every measured candidate failed decided nothing: say so instead of "keep the defaults"."""
    for mode in result.chosen:
        tried = [o for o in result.outcomes if o.candidate.mode == mode and o.status not in ("skipped",)]
        failed = [o for o in tried if o.status == "failed"]
        if tried and len(failed) == len(tried):
            first = failed[0]
            raise TuneFailedError(
                f"every {mode} candidate failed ({len(failed)}), so nothing was measured; the first, "
                f"{first.candidate.axis}={first.candidate.name}: {first.reason}"
            )


class TuneFailedError(RuntimeError):
    """Every candidate of a mode failed: the command exits non-zero."""


# training keys that change what the model learns (the others only change how fast it runs)
NUMERICS_KEYS = train_config_keys(numerics=True)


def verify_full_run(cfg: DictConfig, result: Any, run_dir: Path) -> None:
    """Train the whole job twice with ``perfkit.train``, with the defaults and with the chosen training
    settings, and keep the settings that change numerics only if test accuracy stays within
    ``tune.max_accuracy_drop``: the tuner's short runs predict a full run, this checks it.

    Each run is a fresh ``python -m perfkit.train`` on the job's composed config, exactly as the user
    will run it (in this process, after the tuner's measurements, the same job's accuracy differed).
    It comes on top of ``tune.budget_s`` (the budget is for measuring candidates); its time is in the
    report. Skipped, and said so, when the default run alone took longer than the whole budget.
    """
    chosen = result.chosen.get("train", {})
    numerics = {key: value for key, value in chosen.items() if key in NUMERICS_KEYS}
    if not numerics:
        return
    runs: dict[str, float | str] = {}
    started = time.monotonic()
    for name, keys in (("default", {}), ("tuned", chosen)):
        log.info("verifying over a full run: training with the %s settings", name)
        runs[name] = _train_in_a_fresh_process(cfg, keys, run_dir / "verify", name)
        if name == "default" and (
            isinstance(runs[name], str) or time.monotonic() - started > result.budget_s
        ):
            why = (
                runs[name]
                if isinstance(runs[name], str)
                else (f"one full run took {time.monotonic() - started:.0f} s, more than tune.budget_s")
            )
            result.verification = {"verified": False, "reason": why}
            return
    tuned = runs["tuned"]
    score = Score(str(cfg.get("monitor", "val/acc")), str(cfg.get("monitor_mode", "max")))
    drop = score.drop(float(runs["default"]), float(tuned)) if not isinstance(tuned, str) else math.inf
    kept = drop <= result.max_accuracy_drop
    result.verification = {
        "verified": True,
        "metric": score.metric,
        "default": runs["default"],
        "tuned": None if isinstance(tuned, str) else tuned,
        "drop_points": round(drop, 3) if math.isfinite(drop) else None,
        "kept": kept,
        "seconds": round(time.monotonic() - started, 1),
        **({"tuned_run_failed": tuned} if isinstance(tuned, str) else {}),
    }
    if not kept:
        log.warning(
            "over a full run the chosen settings %s %s (tolerance %g points): keeping only those that do not "
            "change numerics",
            numerics,
            tuned if isinstance(tuned, str) else f"lose {drop:.1f} on {score.metric}",
            result.max_accuracy_drop,
        )
        result.chosen["train"] = {k: v for k, v in chosen.items() if k not in NUMERICS_KEYS}
        result.final.pop("train", None)


def _train_in_a_fresh_process(
    cfg: DictConfig, keys: dict[str, Any], directory: Path, name: str
) -> float | str:
    """Test accuracy of ``python -m perfkit.train`` on ``cfg`` with ``keys`` set, or why it failed."""
    import json
    import subprocess

    values: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    values.pop("tune", None)
    job = DictConfig(values)
    OmegaConf.update(job, "paths.output_dir", str(directory / name), force_add=True)
    OmegaConf.update(job, "trainer.enable_progress_bar", False, force_add=True)
    OmegaConf.update(job, "logger", None, force_add=True)
    for key, value in keys.items():
        OmegaConf.update(job, key, value, force_add=True)
    directory.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(job, directory / f"{name}.yaml")
    command = [
        sys.executable,
        "-m",
        "perfkit.train",
        f"--config-dir={directory}",
        f"--config-name={name}",
        f"hydra.run.dir={directory / name}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    metrics = directory / name / "metrics.json"
    if completed.returncode != 0 or not metrics.is_file():
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        return f"the {name} run failed (exit {completed.returncode}): {lines[-1] if lines else 'no message'}"

    value = monitored_value(json.loads(metrics.read_text()), str(cfg.get("monitor", "val/acc")))
    if value is None:
        return f"the {name} run logged no {cfg.get('monitor')} in validation"
    return value


main = command("perfkit.tune", "tune", run, user_errors=(TuneFailedError,))


if __name__ == "__main__":
    run_program(main)
