"""Where the default job's wall time goes: imports, perfkit's own start-up, training, and the exit.

    python -m benchmarks.startup              # results in benchmarks/results/startup-<device>.*
    python -m benchmarks.startup --rounds 5

Each round runs, as separate processes in a rotating order: ``import torch``, ``import torch,
lightning`` (the floor any Lightning program pays before its first step), the README's default job
(``python -m perfkit.train``, progress bar off), and an interpreter that imports Lightning and exits
with and without ``gc.freeze()`` (what :func:`perfkit.cli.run_program` does) to time the exit alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_IMPORT = "import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
# prints the moment the program is done; the parent times the rest, the interpreter's shutdown
_EXIT = "import gc, time, lightning{freeze}; print(time.time(), flush=True)"


def _python(code: str) -> tuple[str, float]:
    """Run ``python -c code``; its stdout and the moment it ended."""
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return done.stdout.strip(), time.time()


def import_seconds(modules: str) -> float:
    return float(_python(_IMPORT.format(modules=modules))[0])


def exit_seconds(*, freeze: bool) -> float:
    printed, ended = _python(_EXIT.format(freeze="; gc.freeze()" if freeze else ""))
    return ended - float(printed)


def run_default_job(run_dir: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The README's default job as a user runs it (progress bar off); its metrics.json."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit.train",
            f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads((run_dir / "metrics.json").read_text())


def default_job(workdir: Path, index: int, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    started = time.perf_counter()
    metrics = run_default_job(workdir / f"job-{index}", overrides)
    wall = time.perf_counter() - started
    first, fit = metrics["time_to_first_step_s"], metrics["fit_time_s"]
    return {
        "wall_s": wall,
        "time_to_first_step_s": first,
        "fit_s": fit,
        "after_fit_s": wall - first - fit,  # validating and testing the best checkpoint, writing, exiting
        "val_acc": metrics["val"]["acc"],
        "test_acc": metrics["test"]["acc"],
    }


def measure(rounds: int, progress: Any, overrides: tuple[str, ...] = ()) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="perfkit-startup-") as workdir:
        steps: list[tuple[str, Any]] = [
            ("import_torch_s", lambda _: import_seconds("torch")),
            ("import_lightning_s", lambda _: import_seconds("torch, lightning")),
            ("job", lambda index: default_job(Path(workdir), index, overrides)),
            ("exit_s", lambda _: exit_seconds(freeze=False)),
            ("exit_frozen_s", lambda _: exit_seconds(freeze=True)),
        ]
        for index in range(rounds):
            shift = index % len(steps)
            for name, step in steps[shift:] + steps[:shift]:
                value = step(index)
                for key, number in value.items() if isinstance(value, dict) else [(name, value)]:
                    samples.setdefault(key, []).append(number)
            progress()
    return samples


def write(samples: dict[str, list[float]], rounds: int) -> Path:
    from benchmarks.reporting import fmt, new_figure, spread, write_report

    summary = {name: spread(values) for name, values in samples.items()}
    own = [f - i for f, i in zip(samples["time_to_first_step_s"], samples["import_lightning_s"], strict=True)]
    summary["perfkit_before_first_step_s"] = spread(own)
    rows: list[list[Any]] = [["phase", "seconds: median (p10-p90)"]]
    labels = {
        "import_torch_s": "`import torch`",
        "import_lightning_s": "`import torch, lightning` (any Lightning program's floor)",
        "perfkit_before_first_step_s": "perfkit's own start-up: config, data, model, Trainer, sanity check",
        "time_to_first_step_s": "**time to the first training step** (from the process start)",
        "fit_s": "training: first step to the end of the last validation (5 epochs)",
        "after_fit_s": "after fit: test and validate the best checkpoint, write results, exit",
        "wall_s": "**whole default job** (wall)",
        "exit_s": "interpreter exit after importing Lightning",
        "exit_frozen_s": "the same exit after `gc.freeze()` (what perfkit's commands do)",
    }
    rows += [[label, fmt(summary[name], 2)] for name, label in labels.items()]
    accuracy = f"val {summary['val_acc']['median']:.3f}, test {summary['test_acc']['median']:.3f}"
    figure, axes = new_figure(7.5, 2.2)
    left = 0.0
    phases = {
        "import_lightning_s": "import torch and lightning",
        "perfkit_before_first_step_s": "perfkit's own start-up",
        "fit_s": "training (5 epochs, validation included)",
        "after_fit_s": "test, results, exit",
    }
    for color, (name, label) in enumerate(phases.items()):
        width = summary[name]["median"]
        axes.barh([0], [width], left=left, color=f"C{color}", label=label)
        left += width
    axes.set_yticks([])
    axes.set_xlabel("seconds from the process start (medians)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2, fontsize=7)
    return write_report(
        "startup",
        {"rounds": rounds, "samples": samples, "summary": summary},
        title="Start-up and wall time of the default job (`python -m perfkit.train`)",
        description=[
            f"{rounds} rounds, each phase a separate process, in a rotating order; medians with the "
            f"10th-90th percentile over rounds. Accuracy of the jobs: {accuracy}.",
        ],
        table=rows,
        figure=figure,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="perfkit.train overrides for the job (a smaller one)")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    with tqdm(total=args.rounds, unit="round", desc="startup") as bar:
        samples = measure(args.rounds, lambda: bar.update(1), tuple(args.overrides))
    path = write(samples, args.rounds)
    first = statistics.median(samples["time_to_first_step_s"])
    print(f"time to first step {first:.2f} s; report: {path} (and .md, .png)")


if __name__ == "__main__":
    main()
