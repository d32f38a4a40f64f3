"""Profile a short training run: ``python -m perfkit.profile [group=option ...] [key=value ...]``.

The same config groups and keys as ``perfkit.train`` (``configs/profile.yaml`` extends ``train.yaml``
with ``profiler=pytorch``); training stops once the profiler's schedule is recorded. The run directory
gets per-rank traces under ``tensorboard/profiler`` and the step breakdown in ``profile.json`` and
``profile.md``, which is also printed at the end.

    python -m perfkit.profile
    python -m perfkit.profile model=resnet18 strategy=ddp devices=2 accelerator=cpu
    python -m perfkit.profile profiler.schedule.active=5 profiler.with_stack=true profiler.gzip=true
"""

from __future__ import annotations

from perfkit.cli import command, run_program
from perfkit.train import train_objective

main = command("perfkit.profile", "profile", train_objective)


if __name__ == "__main__":
    run_program(main)
