"""Train a LightningModule on a LightningDataModule, both built from the Hydra config.

    python -m perfkit.train                                  # default job: small CNN on bundled MNIST
    python -m perfkit.train model=vit data=digits
    python -m perfkit.train strategy=ddp devices=2 accelerator=cpu

:func:`train` does the work and is what tests and library users call; :func:`main` is
:func:`perfkit.cli.command` around it: Hydra's command line, and every failure as one line.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit.cli import command, run_program, take_command_start
from perfkit.config import ConfigError, check_config, fit_to_targets, instantiate_all

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then validate and test the best checkpoint; return (and save) the run's metrics.

    ``cfg.paths.output_dir`` is the run directory. It must not hold an earlier run's results.
    """
    started = time.perf_counter()
    # the command's start for the CLI's first run; a library call (or a later sweep job) counts from here
    launched_at = take_command_start() or time.time()
    for line in fit_to_targets(cfg):
        log.info(line)
    check_config(cfg)
    from perfkit import distributed
    from perfkit.run import RunDirectory, is_launching_process

    _avoid_duplicate_log_lines()
    distributed.check_shared_run_dir()
    run_dir = Path(cfg.paths.output_dir)
    resume = cfg.get("resume") == "auto"
    # DDP children share the directory their launching process reserved
    reservation = RunDirectory(run_dir, resume=resume) if is_launching_process() else None
    try:
        return _train(cfg, run_dir, resume=resume, launched_at=launched_at, started=started)
    finally:
        if reservation is not None:
            reservation.release()


def _train(
    cfg: DictConfig, run_dir: Path, *, resume: bool, launched_at: float, started: float
) -> dict[str, Any]:
    # Deferred so that `--help` and Hydra's composition errors answer without importing Lightning.
    import lightning as L

    from perfkit.checkpoint import check_fits, check_resume_matches, read_checkpoint
    from perfkit.distributed import HEARTBEATS
    from perfkit.run import resume_checkpoint, write_json
    from perfkit.tracking import check_loggers, finish_training_runs

    check_loggers(cfg.get("logger"))
    # every rank finds the same checkpoint: the others start before rank 0 can write a new one
    resume_from = resume_checkpoint(run_dir) if resume else None
    ckpt_path = str(resume_from) if resume_from else cfg.get("ckpt_path")

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    if resume_from:
        check_resume_matches(cfg, run_dir)
    if ckpt_path:
        key = "resume=auto" if resume_from else "ckpt_path"
        check_fits(read_checkpoint(Path(ckpt_path), key), model, key, Path(ckpt_path))
    trainer, speed, optimizations = build_trainer(cfg, model, launched_at=launched_at, datamodule=datamodule)
    _record_config(cfg, trainer, run_dir, resume_from)

    _fit(trainer, model, datamodule, ckpt_path, cfg)
    # under ddp_spawn fit ran in worker processes: fetch their measurements before validate resets them
    for callback in trainer.callbacks:
        collect = getattr(callback, "collect", None)
        if callable(collect):
            collect(trainer)
    # with pruning, the best checkpoint may predate it: evaluate the final (pruned, fine-tuned) weights
    pruned = _pruned(trainer, optimizations)
    result = evaluate(trainer, model, datamodule, final_weights=bool(pruned))

    epochs, optimizer_steps = speed.progress or (trainer.current_epoch, trainer.global_step)
    metrics = RunMetrics(
        val=result.val,
        test=result.test,
        speed=speed.summary(trainer.world_size),
        epochs=epochs,
        optimizer_steps=optimizer_steps,
        **_setup_description(trainer, model, datamodule, cfg.seed),
        best_checkpoint=_relative_to(result.best_checkpoint, run_dir) if result.best_checkpoint else None,
        evaluated=result.evaluated,
        optimize={**optimizations.summary(model, pruned), **_compile_summary(trainer)},
        resumed_from=_relative_to(str(resume_from), run_dir) if resume_from else None,
        wall_time_s=round(time.perf_counter() - started, 3),
        profile=_profile_summary(run_dir) if trainer.is_global_zero else None,
        monitor=_monitor_summary(trainer),
        skipped=result.skipped,
    ).as_dict()
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        shutil.rmtree(run_dir / HEARTBEATS, ignore_errors=True)  # every rank is done: no race left
        log.info("run directory: %s", run_dir)
    reports = ("metrics.json", "config.yaml", "profile.json", "profile.md")
    finish_training_runs(trainer, run_dir, [run_dir / name for name in reports])
    return metrics


def _pruned(trainer: Any, optimizations: Any) -> bool | None:
    """Whether pruning happened (None: none was asked for); the run says so when it never did."""
    from perfkit.optim.training import pruning_applied

    pruned = pruning_applied(trainer)
    if pruned is False and trainer.is_global_zero:
        log.warning(
            "optimize.prune.at_epoch=%s was never reached: nothing was pruned; the best checkpoint is evaluated",
            optimizations.prune_at_epoch,
        )
    return pruned


def _fit(trainer: Any, model: Any, datamodule: Any, ckpt_path: str | None, cfg: DictConfig) -> None:
    try:
        trainer.fit(
            model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=_restore_mode(model, datamodule)
        )
    except ValueError as error:
        if "`val_check_interval`" not in str(error):
            raise
        # Lightning checks it against the loader's length only once fit has started
        interval = cfg.trainer.get("val_check_interval")
        raise ConfigError(f"trainer.val_check_interval={interval}: {' '.join(str(error).split())}") from None


def _restore_mode(model: Any, datamodule: Any) -> bool | None:
    """``weights_only`` for Lightning's restores of this run's checkpoints, said in the log when it
    must be False (hyper-parameters that hold objects)."""
    from perfkit.checkpoint import holds_objects, weights_only_for

    weights_only = weights_only_for(model, datamodule)
    if weights_only is False:
        log.info(
            "%s's hyper-parameters hold objects (%s): its checkpoints are restored with weights_only=False, "
            "as Lightning's load_from_checkpoint needs",
            type(model).__name__,
            ", ".join(holds_objects(model, datamodule)),
        )
    return weights_only


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

    from perfkit import distributed
    from perfkit.callbacks import (
        DivergenceCheck,
        Heartbeat,
        InterruptWatch,
        RandomStates,
        TrainingSpeed,
        add_progress_bar,
    )
    from perfkit.checkpoint import checkpoint_io
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


def _record_config(cfg: DictConfig, trainer: Any, run_dir: Path, resume_from: Path | None) -> None:
    """``config.yaml`` in the run directory (rank 0) and the hyper-parameters in every logger."""
    from perfkit.system import environment

    if trainer.is_global_zero:
        OmegaConf.save(cfg, _config_file(run_dir), resolve=True)
        log.info("run directory: %s%s", run_dir, f" (resuming from {resume_from})" if resume_from else "")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, "system": environment()})  # type: ignore[dict-item]


@dataclass
class Evaluation:
    val: dict[str, float]
    test: dict[str, float]
    best_checkpoint: str  # "" when no checkpoint callback saved one
    evaluated: str  # "best checkpoint" or "final weights"
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it did not run


def evaluate(trainer: Any, model: Any, datamodule: Any, *, final_weights: bool = False) -> Evaluation:
    """Validate and test the best checkpoint (``final_weights``: the weights in memory); a stage the
    module or data has no step or loader for is skipped and recorded as such."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from perfkit.checkpoint import weights_only_for
    from perfkit.monitoring import missing_stage

    # the checkpoint that tracks a monitored metric holds the best model (Lightning's default one, if
    # no callback is configured, monitors nothing and holds the last)
    keepers = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    keeper = next((c for c in keepers if c.monitor), keepers[0] if keepers else None)
    best = keeper.best_model_path if keeper else ""
    source = None if final_weights else best or None
    evaluated = "best checkpoint" if source else "final weights"
    if source and not Path(source).is_file():  # removed during the run, by something other than perfkit
        evaluated, source = f"final weights ({best} was removed during the run)", None
        log.warning("the best checkpoint %s was removed during the run: evaluating the final weights", best)
    weights_only = weights_only_for(model, datamodule)
    results: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        why = missing_stage(stage, model, datamodule)
        if why:
            skipped[stage] = why
            if trainer.is_global_zero:
                log.info("%s skipped: %s", "validation" if stage == "val" else "test", why)
            results[stage] = {}
            continue
        out = run(
            model, datamodule=datamodule, ckpt_path=source, verbose=stage == "test", weights_only=weights_only
        )
        results[stage] = _strip_prefix(out[0], f"{stage}/") if out else {}
    return Evaluation(
        val=results["val"],
        test=results["test"],
        best_checkpoint=best,
        evaluated=evaluated,
        skipped=skipped,
    )


@dataclass
class RunMetrics:
    """What ``metrics.json`` holds and :func:`train` returns (as a dict)."""

    val: dict[str, float]
    test: dict[str, float]
    speed: dict[str, Any]  # TrainingSpeed.summary: samples/s, time to first step, epoch times
    epochs: int
    optimizer_steps: int
    world_size: int
    device: str
    accelerator: str
    strategy: str
    process_group_backend: str | None
    precision: str
    seed: int
    best_checkpoint: str | None
    evaluated: str
    parameters: int
    optimize: dict[str, Any]
    data_loading: dict[str, Any]
    resumed_from: str | None
    wall_time_s: float
    versions: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None  # the pytorch profiler's step breakdown, when it ran
    # a module that does not validate: the training metric the checkpoints followed, and why
    monitor: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # evaluation stages that did not run, and why

    def as_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        speed = values.pop("speed")
        for optional in ("profile", "monitor", "skipped"):
            if not values[optional]:
                del values[optional]
        return {"val": values.pop("val"), "test": values.pop("test"), **speed, **values}


def _setup_description(trainer: Any, model: Any, datamodule: Any, seed: int) -> dict[str, Any]:
    """The :class:`RunMetrics` fields that describe where and how the run trained."""
    from perfkit.system import environment

    return {
        "world_size": trainer.world_size,
        "device": _device_name(trainer),
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "process_group_backend": _process_group_backend(trainer.strategy),
        "precision": str(trainer.precision),
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_loading": _data_loading(datamodule, trainer),
        "versions": environment(),
    }


def _profile_summary(run_dir: Path) -> dict[str, Any] | None:
    """Log the step breakdown the ``pytorch`` profiler saved (rank 0 wrote it, possibly in a spawned
    worker) and return its headline for ``metrics.json``."""
    import json

    from perfkit.profiling.report import summary_lines

    path = run_dir / "profile.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    for line in summary_lines(result):
        log.info(line)
    return {
        "breakdown": result.get("breakdown"),
        "hint": result.get("hint"),
        "trace_dir": _relative_to(result["trace_dir"], run_dir),
        "report": "profile.md",
    }


def _process_group_backend(strategy: Any) -> str | None:
    """gloo, nccl, ...: what DDP used (decided in the workers under ddp_spawn, so derived here too)."""
    from lightning.fabric.utilities.distributed import _get_default_process_group_backend_for_device
    from lightning.pytorch.strategies import DDPStrategy

    if not isinstance(strategy, DDPStrategy):
        return None
    return strategy.process_group_backend or _get_default_process_group_backend_for_device(
        strategy.root_device
    )


def _monitor_summary(trainer: Any) -> dict[str, Any] | None:
    from perfkit.monitoring import TrainingMonitor

    monitor = next((c for c in trainer.callbacks if isinstance(c, TrainingMonitor)), None)
    return monitor.summary() if monitor else None


def _compile_summary(trainer: Any) -> dict[str, Any]:
    from perfkit.optim.training import CompileForward

    compiler = next((c for c in trainer.callbacks if isinstance(c, CompileForward)), None)
    return compiler.summary() if compiler else {}


def _config_file(run_dir: Path) -> Path:
    """``config.yaml``; a resumed run keeps the original and adds ``config.resume-N.yaml``."""
    path, attempt = run_dir / "config.yaml", 1
    while path.exists():
        path = run_dir / f"config.resume-{attempt}.yaml"
        attempt += 1
    return path


def _data_loading(datamodule: Any, trainer: Any) -> dict[str, Any]:
    """Loader workers per rank and, for ``num_workers=auto``, the measurements behind the choice."""
    workers = getattr(datamodule, "workers_per_rank", None)
    if workers is None:
        return {}
    if datamodule.trainer is None:  # ddp_spawn attached the trainer in the workers only
        datamodule.trainer = trainer
    info: dict[str, Any] = {
        "num_workers_per_rank": workers(),
        "requested": datamodule.num_workers,
        "pin_memory": datamodule.uses_pin_memory(),
        "persistent_workers": datamodule.persistent_workers,
    }
    decision = getattr(datamodule, "resident", None)
    if callable(decision):
        info["device_resident"] = decision().summary()
    choice = getattr(datamodule, "worker_choice", None)
    if choice is not None:
        info["auto"] = {"source": choice.source, "samples_per_s": choice.samples_per_s}
    return info


def _avoid_duplicate_log_lines() -> None:
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


def _relative_to(path: str, directory: Path) -> str:
    """``path`` relative to the run directory when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(directory.resolve()))
    except ValueError:
        return path


def _strip_prefix(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): float(value) for key, value in values.items()}


def _device_name(trainer: Any) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device.type)


def monitored_value(metrics: Mapping[str, Any], monitor: str) -> float | None:
    """The monitored validation metric of a run (``val/acc`` -> ``metrics["val"]["acc"]``): the value a
    Hydra sweeper optimises."""
    value = metrics.get("val", {}).get(monitor.removeprefix("val/"))
    return float(value) if value is not None else None


def train_objective(cfg: DictConfig) -> float | None:
    """:func:`train`, returning the monitored validation metric: what a Hydra sweeper optimises."""
    return monitored_value(train(cfg), str(cfg.get("monitor", "val/acc")))


main = command("perfkit.train", "train", train_objective)


if __name__ == "__main__":
    run_program(main)
