"""Profile a short training run: ``python -m perfkit.profile [group=option ...] [key=value ...]``.

The same config groups and keys as ``perfkit.train`` (``configs/profile.yaml`` extends ``train.yaml``
with ``profiler=pytorch``); training stops once the profiler's schedule is recorded. The run directory
gets per-rank traces under ``tensorboard/profiler`` and the step breakdown in ``profile.json`` and
``profile.md``, which is also printed at the end.

    python -m perfkit.profile
    python -m perfkit.profile model=resnet18 strategy=ddp devices=2 accelerator=cpu
    python -m perfkit.profile profiler.schedule.active=5 profiler.with_stack=true profiler.gzip=true

``--trace FILE ...`` breaks down traces that already exist instead, from any program that stepped a
``torch.profiler`` schedule, on any machine (a GPU box's traces read on a laptop, say):

    python -m perfkit.profile --trace outputs/train/runs/<run>/tensorboard/profiler/rank0.*.pt.trace.json
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from perfkit.cli import command, run_program
from perfkit.fitting import train_objective

PROGRAM = "perfkit.profile"
profile_run = command(PROGRAM, "profile", train_objective)


def report_traces(paths: Sequence[str]) -> int:
    """Print each trace's step breakdown and hint as Markdown; the exit status (2: unusable input)."""
    if not paths:
        print(f"{PROGRAM}: error: --trace needs one or more .pt.trace.json[.gz] files", file=sys.stderr)
        return 2
    from dataclasses import asdict

    # here, not at the top: `python -m perfkit.profile --help` answers before torch loads
    from perfkit.profiling.breakdown import hint
    from perfkit.profiling.report import breakdown_lines
    from perfkit.profiling.trace import trace_breakdown

    sections = []
    for path in paths:
        try:
            breakdown = trace_breakdown(path)
        except (OSError, ValueError) as error:
            print(f"{PROGRAM}: error: {path}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
            return 2
        if breakdown is None:
            print(
                f"{PROGRAM}: error: {path} holds no complete ProfilerStep: profile with "
                "torch.profiler.profile(schedule=...) and call prof.step() after each training step",
                file=sys.stderr,
            )
            return 2
        sections += [
            f"# Step profile of `{path}`",
            "",
            *breakdown_lines(asdict(breakdown), hint(breakdown), "mean"),
        ]
    print("\n".join(sections))
    return 0


def main() -> None:
    if sys.argv[1:2] == ["--trace"]:
        sys.exit(report_traces(sys.argv[2:]))
    profile_run()


if __name__ == "__main__":
    run_program(main)
