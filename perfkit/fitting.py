"""One training run: guard the run directory, build, fit, test, record metrics.json."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit import distributed
from perfkit.build import avoid_duplicate_log_lines, build, build_trainer
from perfkit.checkpoint import (
    check_fits,
    check_resume_matches,
    holds_objects,
    read_checkpoint,
    weights_only_for,
)
from perfkit.cli import take_command_start
from perfkit.config import ConfigError, check_config, fit_to_targets
from perfkit.distributed import HEARTBEATS
from perfkit.evaluation import (
    RunMetrics,
    evaluate,
    monitor_summary,
    monitored_value,
    profile_summary,
    relative_to,
    setup_description,
)
from perfkit.run import RunDirectory, is_launching_process, resume_checkpoint
from perfkit.system import environment
from perfkit.tracking import check_loggers, finish_training_runs

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
    avoid_duplicate_log_lines()
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
    record = RunMetrics(
        val=result.val,
        test=result.test,
        speed=speed.summary(trainer.world_size),
        epochs=epochs,
        optimizer_steps=optimizer_steps,
        **setup_description(trainer, model, datamodule, cfg.seed),
        best_checkpoint=relative_to(result.best_checkpoint, run_dir) if result.best_checkpoint else None,
        evaluated=result.evaluated,
        optimize=optimizations.summary(model, trainer),
        resumed_from=relative_to(str(resume_from), run_dir) if resume_from else None,
        wall_time_s=round(time.perf_counter() - started, 3),
        profile=profile_summary(run_dir) if trainer.is_global_zero else None,
        monitor=monitor_summary(trainer),
        skipped=result.skipped,
    )
    metrics = record.to_dict()
    if trainer.is_global_zero:
        record.save(run_dir)
        shutil.rmtree(run_dir / HEARTBEATS, ignore_errors=True)  # every rank is done: no race left
        log.info("run directory: %s", run_dir)
    reports = ("metrics.json", "metrics.md", "config.yaml", "profile.json", "profile.md")
    finish_training_runs(trainer, run_dir, [run_dir / name for name in reports])
    return metrics


def _pruned(trainer: Any, optimizations: Any) -> bool | None:
    """Whether pruning happened (None: none was asked for); the run says so when it never did."""
    # here, not at the top: perfkit.train imports this module, and `--help` answers before Lightning loads
    from perfkit.optim.training import pruning_applied

    pruned = pruning_applied(trainer)
    if pruned is False and trainer.is_global_zero:
        log.warning(
            "optimize.prune.at_epoch=%s was never reached: nothing was pruned; the best checkpoint is evaluated",
            optimizations.settings.prune.at_epoch,
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
    weights_only = weights_only_for(model, datamodule)
    if weights_only is False:
        log.info(
            "%s's hyper-parameters hold objects (%s): its checkpoints are restored with weights_only=False, "
            "as Lightning's load_from_checkpoint needs",
            type(model).__name__,
            ", ".join(holds_objects(model, datamodule)),
        )
    return weights_only


def _record_config(cfg: DictConfig, trainer: Any, run_dir: Path, resume_from: Path | None) -> None:
    """``config.yaml`` in the run directory (rank 0) and the hyper-parameters in every logger."""

    if trainer.is_global_zero:
        OmegaConf.save(cfg, _config_file(run_dir), resolve=True)
        log.info("run directory: %s%s", run_dir, f" (resuming from {resume_from})" if resume_from else "")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams({**resolved, "system": environment()})  # type: ignore[dict-item]


def _config_file(run_dir: Path) -> Path:
    """``config.yaml``; a resumed run keeps the original and adds ``config.resume-N.yaml``."""
    path, attempt = run_dir / "config.yaml", 1
    while path.exists():
        path = run_dir / f"config.resume-{attempt}.yaml"
        attempt += 1
    return path


def train_objective(cfg: DictConfig) -> float | None:
    """:func:`train`, returning the monitored validation metric: what a Hydra sweeper optimises."""
    return monitored_value(train(cfg), str(cfg.get("monitor", "val/acc")))
