"""The one GPU check: every GPU figure perfkit's docs quote, measured in one time-boxed command.

    python -m benchmarks.verify OUT [--budget-s 540] [--dry-run]

Steps, most important first, each a subprocess cut at its own time box and at what is left of the
budget, so a cut run still leaves every finished step's files:

1. the ``gpu`` tests;
2. training parity against the hand-written loop: the default job, the digits MLP and
   ``experiment=mnist_resnet18``, with the CUDA-graphs variant;
3. ``bench=gpu`` trimmed to fit: ResNet-50 and ViT-B/16 training, the best variants and the
   hand-written row;
4. ``perfkit.profile accelerator=gpu`` (its step breakdown; the gpu tests compare it with the
   TensorBoard plugin's overview);
5. start-up time.

At most 8 files land in OUT, none in a folder (what a lent GPU machine sends back): verify.log (every
step's output and the summary), parity.{json,md}, bench.{json,md}, profile.md, startup.{json,md}.
The summary printed at the end is the figures the docs' GPU sentences rest on. ``--dry-run`` runs the
same steps on the CPU at toy sizes in a minute or two, so the command is known to work before a
GPU is ever lent (a test in the default suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES = 8


@dataclass
class Step:
    name: str
    command: list[str]
    box_s: float  # the most this step may take
    keep: dict[str, str] = field(default_factory=dict)  # glob in the step's folder -> name in OUT


def steps(work: Path, dry_run: bool) -> list[Step]:
    """The steps in priority order; ``dry_run``: the same commands at toy sizes on the CPU."""
    python = sys.executable
    device = "cpu" if dry_run else "cuda"
    tests = [python, "-m", "pytest", "-m", "gpu", "-o", "addopts=", "-p", "no:cacheprovider", "-q", "tests"]
    parity = [python, "-m", "benchmarks.parity", "--device", device, "--report", "parity"]
    parity += ["--jobs", "digits_mlp", "--rounds", "1"] if dry_run else ["--jobs", "default", "digits_mlp",
                                                                          "mnist_resnet18", "--rounds", "4"]  # fmt: skip
    bench = [python, "-m", "perfkit.bench", f"device={device}", f"hydra.run.dir={work / 'bench'}",
             "bench.modes=[train]", "bench.warmup=1"]  # fmt: skip
    bench += (
        ["bench=quick", "bench.models=[mlp]", "bench.variants=[eager,channels_last]", "bench.rounds=6",
         "bench.batch_sizes=[8]", "bench.train_epochs=0", "bench.finetune_epochs=0", "bench.devices=[cpu]"]
        if dry_run
        else ["bench=gpu", "bench.rounds=6",
              "bench.variants=[eager,bf16_channels_last,bf16_channels_last_compile,cuda_graphs,handwritten]"]
    )  # fmt: skip
    profile = [python, "-m", "perfkit.profile", f"hydra.run.dir={work / 'profile'}", "logger=none",
               "trainer.enable_progress_bar=false", f"accelerator={'cpu' if dry_run else 'gpu'}"]  # fmt: skip
    profile += (
        ["data=digits", "model=mlp", "trainer.max_epochs=1", "trainer.limit_val_batches=2"] if dry_run else []
    )
    startup = [python, "-m", "benchmarks.startup", "--rounds", "1" if dry_run else "2"]
    startup += ["debug=fast", "data=digits", "model=mlp", "logger=none"] if dry_run else []
    # seconds per step on an H200 (9 minutes together); the dry run checks the commands, not the
    # time, so its boxes only catch a hang (a busy 2-core CI host takes 40 s for the start-up step)
    box = dict(zip(("tests", "parity", "bench", "profile", "startup"), (180, 180, 180, 180, 180) if dry_run
                   else (150, 170, 170, 60, 60), strict=True))  # fmt: skip
    return [
        Step("gpu tests", tests, box["tests"]),
        Step("parity", parity, box["parity"], {"parity-*.json": "parity.json", "parity-*.md": "parity.md"}),
        Step(
            "bench", bench, box["bench"], {"bench/report.json": "bench.json", "bench/report.md": "bench.md"}
        ),
        Step("profile", profile, box["profile"], {"profile/profile.md": "profile.md"}),
        Step(
            "startup",
            startup,
            box["startup"],
            {"startup-*.json": "startup.json", "startup-*.md": "startup.md"},
        ),
    ]


def run(out: Path, budget_s: float, dry_run: bool) -> dict[str, Any]:
    """Run the steps into ``out``; return what each did (status, seconds) and the summary figures."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    done: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="perfkit-verify-") as folder,
        (out / "verify.log").open("a") as log,
    ):
        work = Path(folder)
        # the benchmarks write their reports where this says, not into benchmarks/results/
        env = {**os.environ, "PERFKIT_BENCH_RESULTS": str(work), "PYTHONWARNINGS": "ignore"}
        for step in steps(work, dry_run):
            left = deadline - time.monotonic()
            if left < 10:
                done[step.name] = {"status": "not run: out of time"}
                continue
            done[step.name] = _run_step(step, min(step.box_s, left), env, log)
            for pattern, name in step.keep.items():
                for found in sorted(work.glob(pattern))[:1]:
                    shutil.copyfile(found, out / name)
            log.flush()
        summary = summarise(out, done)
        log.write("\n" + json.dumps(summary, indent=2) + "\n")
    kept = [p for p in out.iterdir() if p.is_file()]
    assert len(kept) <= MAX_FILES, kept  # what a lent machine can send back
    return summary


def _run_step(step: Step, box_s: float, env: dict[str, str], log: Any) -> dict[str, Any]:
    log.write(f"\n=== {step.name} (at most {box_s:.0f} s): {' '.join(step.command)}\n")
    log.flush()
    print(f"verify: {step.name} (at most {box_s:.0f} s)", flush=True)
    started = time.monotonic()
    try:
        code = subprocess.run(
            step.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=box_s, check=False
        ).returncode
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        status = f"cut at its {box_s:.0f} s time box"
    seconds = round(time.monotonic() - started, 1)
    log.write(f"=== {step.name}: {status} in {seconds} s\n")
    return {"status": status, "seconds": seconds}


def summarise(out: Path, done: dict[str, Any]) -> dict[str, Any]:
    """The figures the docs' GPU claims rest on, read back from the files the steps left."""
    summary: dict[str, Any] = {"steps": done}
    parity = _json(out / "parity.json")
    if parity:
        summary["parity"] = {  # perfkit's samples/s over the hand-written loop's, per job and variant
            job["job"]: {
                **{key: job[key]["ratio"] for key in ("perfkit_vs_plain", "perfkit_vs_plain_resident") if key in job},
                **{f"{key}_vs_plain": value["vs_plain"]["ratio"] for key, value in job.items()
                   if isinstance(value, dict) and "vs_plain" in value},
            }
            for job in parity.get("jobs", [])
        }  # fmt: skip
    bench = _json(out / "bench.json")
    if bench:
        summary["device"] = bench.get("environment", {}).get("gpu") or bench.get("environment", {}).get("cpu")
        summary["bench"] = [
            {key: row.get(key) for key in ("model", "variant", "mode", "speedup", "throughput", "mfu",
                                            "mfu_measured", "noisy")}
            for row in bench.get("rows", []) if row.get("status") == "ok"
        ]  # fmt: skip
    startup = _json(out / "startup.json")
    if startup:
        summary["startup"] = startup.get("summary")
    return summary


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verify", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where the (at most 8) result files go")
    parser.add_argument(
        "--budget-s", type=float, default=540.0, help="the whole check's time (default 9 min)"
    )
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    args = parser.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device on this machine: --dry-run runs the steps on the CPU")
    summary = run(args.out, args.budget_s, args.dry_run)
    print(json.dumps(summary, indent=2))
    failed = [name for name, step in summary["steps"].items() if step["status"] != "ok"]
    if failed:
        print(f"verify: not ok: {', '.join(failed)} (see {args.out / 'verify.log'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
