"""A finished run scored and described: validation/test metrics, and the run's metrics.json record
(setup, data loading, compile, monitor and profile summaries)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from perfkit.checkpoint import weights_only_for
from perfkit.profiling.report import summary_lines
from perfkit.reporting import markdown_table
from perfkit.run import write_json
from perfkit.system import environment

log = logging.getLogger(__name__)


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

    # here, not at the top: perfkit.train imports this module, and `--help` answers before Lightning loads
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

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        speed = values.pop("speed")
        for optional in ("profile", "monitor", "skipped"):
            if not values[optional]:
                del values[optional]
        return {"val": values.pop("val"), "test": values.pop("test"), **speed, **values}

    as_dict = to_dict

    def to_markdown(self) -> str:
        """The run at a glance: held-out metrics, speed, where and how it trained."""
        rate = self.speed.get("train_samples_per_s")
        facts = [
            *((f"val/{name}", f"{value:.4g}") for name, value in self.val.items()),
            *((f"test/{name}", f"{value:.4g}") for name, value in self.test.items()),
            ("evaluated", self.evaluated),
            ("training samples/s", f"{rate:,.0f}" if rate else "n/a"),
            ("time to first step", f"{self.speed.get('time_to_first_step_s')} s"),
            ("epochs, optimizer steps", f"{self.epochs}, {self.optimizer_steps}"),
            ("device", f"{self.device} x {self.world_size} ({self.strategy}, {self.precision})"),
            ("parameters", f"{self.parameters:,}"),
            ("optimizations", ", ".join(sorted(k for k, v in self.optimize.items() if v)) or "none"),
            ("wall time", f"{self.wall_time_s:.1f} s"),
        ]
        skipped = [f"- {stage}: {why}" for stage, why in self.skipped.items()]
        return (
            "\n".join(["# Training run", "", *markdown_table(["", ""], facts), "", *skipped]).rstrip() + "\n"
        )

    def save(self, directory: Path) -> list[Path]:
        """``metrics.json`` and ``metrics.md`` in ``directory``."""
        written = [Path(directory) / "metrics.json", Path(directory) / "metrics.md"]
        write_json(written[0], self.to_dict())
        written[1].write_text(self.to_markdown())
        return written


def setup_description(trainer: Any, model: Any, datamodule: Any, seed: int) -> dict[str, Any]:
    """The :class:`RunMetrics` fields that describe where and how the run trained."""

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


def profile_summary(run_dir: Path) -> dict[str, Any] | None:
    """Log the step breakdown the ``pytorch`` profiler saved (rank 0 wrote it, possibly in a spawned
    worker) and return its headline for ``metrics.json``."""
    import json

    path = run_dir / "profile.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    for line in summary_lines(result):
        log.info(line)
    return {
        "breakdown": result.get("breakdown"),
        "hint": result.get("hint"),
        "trace_dir": relative_to(result["trace_dir"], run_dir),
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


def monitor_summary(trainer: Any) -> dict[str, Any] | None:
    # here, not at the top: perfkit.train imports this module, and `--help` answers before Lightning loads
    from perfkit.monitoring import TrainingMonitor

    monitor = next((c for c in trainer.callbacks if isinstance(c, TrainingMonitor)), None)
    return monitor.summary() if monitor else None


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


def relative_to(path: str, directory: Path) -> str:
    """``path`` relative to the run directory when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(directory.resolve()))
    except ValueError:
        return path
