"""A training run loaded back (its checkpoint and resolved config), and a network fine-tuned briefly
after a transform with the module's own training step."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit.checkpoint import read_checkpoint
from perfkit.config import ConfigError
from perfkit.network import get_network, with_network


def load_run(ckpt_path: str) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint of a perfkit training run and that run's resolved config."""

    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is not a file: give a checkpoint of a perfkit training run"
        )
    run_config = path.resolve().parent.parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: no config.yaml in its run directory ({run_config.parent}); "
            "perfkit.optimize needs a checkpoint written by perfkit.train"
        )
    return read_checkpoint(path, "ckpt_path"), OmegaConf.load(run_config)  # type: ignore[return-value]


def finetune(network: Any, model: Any, path: str, datamodule: Any, epochs: int, device: Any) -> Any:
    """Train the pruned network a few epochs inside the module (its own training_step and
    configure_optimizers), to recover accuracy."""
    import lightning as L

    tuned: Any = copy.deepcopy(with_network(model, path, network)).train()
    if hasattr(tuned, "scheduler_factory"):
        tuned.scheduler_factory = None  # perfkit's classifiers: the run's schedule spans the whole run
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=device.type,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
    )
    trainer.fit(tuned, datamodule=datamodule)
    return get_network(tuned, path)
