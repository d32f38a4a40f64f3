"""Train a LightningModule on a LightningDataModule, both built from the Hydra config.

    python -m perfkit.train                                  # default job: small CNN on bundled MNIST
    python -m perfkit.train model=vit data=digits
    python -m perfkit.train strategy=ddp devices=2 accelerator=cpu

:func:`perfkit.fitting.train` does the work and is what tests and library users call (importable from
here too); :func:`main` is :func:`perfkit.cli.command` around it: Hydra's command line, and every
failure as one line.
"""

from __future__ import annotations

from perfkit.cli import command, run_program
from perfkit.fitting import train, train_objective

__all__ = ["main", "train", "train_objective"]

main = command("perfkit.train", "train", train_objective)


if __name__ == "__main__":
    run_program(main)
