"""Building a run from its config: the user's DataModule and LightningModule, the Trainer with
perfkit's callbacks, and the strategy (DDP's timeouts and options on CPUs and GPUs)."""

from __future__ import annotations

import datetime
import inspect
import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit import distributed
from perfkit.checkpoint import checkpoint_io
from perfkit.config import instantiate_all

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[Any, Any]:
    """The datamodule and the model of a training config; the model gets the datamodule's
    ``input_shape``/``num_classes`` when it takes them (what every perfkit command builds)."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **_shapes_for(cfg.model, datamodule))
    return datamodule, model


def build_trainer(
    cfg: DictConfig, model: Any, *, launched_at: float, datamodule: Any = None
) -> tuple[Any, Any, Any]:
    """The Trainer with perfkit's callbacks (speed, divergence check, training-time optimizations),
    loggers and profiler; checked before any DDP process starts. A module that cannot validate gets
    a :class:`~perfkit.monitoring.TrainingMonitor`."""
    import lightning as L
    from hydra.utils import instantiate

    # here, not at the top: perfkit.train imports this module, and `--help` answers before Lightning loads
    from perfkit.callbacks import (
        DivergenceCheck,
        Heartbeat,
        InterruptWatch,
        RandomStates,
        TrainingSpeed,
        add_progress_bar,
    )
    from perfkit.data.checks import FirstBatchCheck
    from perfkit.monitoring import TrainingMonitor, missing_stage
    from perfkit.optim.training import TrainingOptimizations
    from perfkit.overhead import QuietProfiler, skip_gpu_probe_without_gpus

    skip_gpu_probe_without_gpus()

    speed = TrainingSpeed(launched_at=launched_at)
    optimizations = TrainingOptimizations.from_config(cfg.get("optimize"))
    no_validation = missing_stage("val", model, datamodule)
    callbacks = [
        # first: early stopping must not look for a validation metric before it is redirected
        *([TrainingMonitor(no_validation)] if no_validation else []),
        *instantiate_all(cfg.get("callbacks"), instantiate),
        *optimizations.callbacks(model),
        speed,
        DivergenceCheck(),
        RandomStates(),
        InterruptWatch(),
        Heartbeat(str(cfg.paths.output_dir)),
        *([FirstBatchCheck()] if cfg.get("check_data", True) else []),
    ]
    add_progress_bar(callbacks, enabled=cfg.trainer.get("enable_progress_bar", True) is not False)
    profiler = instantiate(cfg.profiler) if cfg.get("profiler") else None
    # perfkit's torch.profiler is a callback; Lightning's own profilers go to the Trainer
    if isinstance(profiler, L.Callback):
        callbacks.append(profiler)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        strategy=build_strategy(cfg.strategy.name, _strategy_options(cfg, model)),
        callbacks=callbacks,
        logger=instantiate_all(cfg.get("logger"), instantiate) or False,
        profiler=QuietProfiler() if profiler is None or isinstance(profiler, L.Callback) else profiler,
        plugins=[checkpoint_io()],
        _convert_="all",
    )
    distributed.remember_trainer(trainer)
    optimizations.check_trainer(trainer)
    distributed.check_multirun(trainer)
    distributed.check_master_port(trainer)
    return trainer, speed, optimizations


def avoid_duplicate_log_lines() -> None:
    """``import lightning`` adds a console handler to its logger even when the root logger (Hydra's)
    already prints everything; keep one."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def _strategy_options(cfg: DictConfig, model: Any) -> dict[str, Any]:
    """The strategy's options. DDP finds unused parameters for a manually optimized module (a GAN's
    generator step leaves the discriminator's gradients unused, which DDP otherwise refuses), and its
    collectives time out after ``strategy.timeout_s`` (on CPUs 10 minutes, not torch's 30, so a
    stopped rank is named well before anyone gives up on the job)."""
    strategy = cfg.strategy
    options = OmegaConf.to_container(strategy.options, resolve=True) if strategy.get("options") else {}
    assert isinstance(options, dict)
    values: dict[str, Any] = {str(key): value for key, value in options.items()}
    if not str(strategy.name).startswith(("ddp", "fsdp")):
        return values
    manual = getattr(model, "automatic_optimization", True) is False
    if manual and "find_unused_parameters" not in values:
        log.info(
            "%s optimizes manually: DDP runs with find_unused_parameters=True "
            "(+strategy.options.find_unused_parameters=false to turn it off)",
            type(model).__name__,
        )
        values["find_unused_parameters"] = True
    timeout = strategy.get("timeout_s") or (CPU_COLLECTIVE_TIMEOUT_S if _on_cpu(cfg) else None)
    if timeout and "timeout" not in values:
        values["timeout"] = datetime.timedelta(seconds=float(timeout))
    return values


CPU_COLLECTIVE_TIMEOUT_S = 600


def _on_cpu(cfg: DictConfig) -> bool:
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def build_strategy(name: str, options: Any = None) -> Any:
    """Lightning's strategy registered as ``name``, with ``options`` overriding its defaults.

    Without options the name itself is returned, so Lightning resolves it exactly as
    ``Trainer(strategy=name)`` would (``auto`` included).
    """
    if not options:
        return name
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(options, DictConfig):
        options = OmegaConf.to_container(options, resolve=True)
    entry = StrategyRegistry[name]
    return entry["strategy"](**{**entry["init_params"], **options})


def _shapes_for(model_cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """``input_shape``/``num_classes`` from the datamodule, for the model parameters that take them."""
    from hydra.utils import get_object

    accepted = inspect.signature(get_object(model_cfg._target_)).parameters
    links = {}
    for name in ("input_shape", "num_classes"):
        if name in accepted and name not in model_cfg and hasattr(datamodule, name):
            links[name] = getattr(datamodule, name)
    return links
