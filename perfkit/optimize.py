"""Optimize a trained checkpoint and compare it with the original on the held-out test set.

    python -m perfkit.optimize ckpt_path=RUN/checkpoints/best.ckpt quantize=int8_dynamic \\
        prune.amount=0.5 prune.method=channels compile=true

Writes into its run directory: ``optimized.pt`` (the final model, ``torch.load(..., weights_only=False)``),
``comparison.json`` (environment, config, one row per stage, transform reports) and ``comparison.md``.
The work is :func:`perfkit.optim.pipeline.optimize` (``optimize``, ``load_run``, ``finetune`` and
``comparison_markdown`` are importable from here too).
"""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

from perfkit.cli import command, run_program

_LAZY_ATTRIBUTES = {
    "optimize": "perfkit.optim.pipeline",
    "comparison_markdown": "perfkit.optim.pipeline",
    "finetune": "perfkit.optim.runs",
    "load_run": "perfkit.optim.runs",
}


def _optimize(cfg: DictConfig) -> dict[str, Any]:
    # here, not at the top: `--help` and a config typo answer before torch and Lightning load
    from perfkit.optim.pipeline import optimize

    return optimize(cfg)


main = command("perfkit.optimize", "optimize", _optimize, user_errors=(ValueError,))


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module 'perfkit.optimize' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    run_program(main)
