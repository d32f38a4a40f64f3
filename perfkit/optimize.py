"""Optimize a trained checkpoint and compare it with the original on the held-out test set.

    python -m perfkit.optimize ckpt_path=RUN/checkpoints/best.ckpt quantize=int8_dynamic \\
        prune.amount=0.5 prune.method=channels compile=true

Writes into its run directory: ``optimized.pt`` (the final model, ``torch.load(..., weights_only=False)``),
``comparison.json`` (environment, config, one row per stage, transform reports) and ``comparison.md``.
The work is :func:`perfkit.optim.pipeline.optimize` (importable from here too).
"""

from __future__ import annotations

from perfkit.cli import command, run_program
from perfkit.optim.pipeline import comparison_markdown, optimize
from perfkit.optim.runs import finetune, load_run

__all__ = ["comparison_markdown", "finetune", "load_run", "main", "optimize"]

main = command("perfkit.optimize", "optimize", optimize, user_errors=(ValueError,))


if __name__ == "__main__":
    run_program(main)
