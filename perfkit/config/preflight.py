"""Pre-flight checks of a composed config: every problem one ConfigError line naming the key and
what is allowed, before anything is built."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from perfkit.config.compose import task_overrides
from perfkit.config.typed import check_node, typed_node
from perfkit.errors import ConfigError, first_line
from perfkit.schemas import NODES
from perfkit.targets import is_instantiable as _is_instantiable
from perfkit.targets import locate as _locate

_DEVICES_HELP = (
    "use a positive count (devices=2), -1 or 'auto' for all available, or a list of indices (devices=[0,1])"
)


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found in a composed config."""
    check_required(cfg)
    check_resolves(cfg)
    _check_run_options(cfg)
    for key, node in _instantiable_nodes(cfg, ""):
        check_node(node, key)
    for key in NODES:
        if key in cfg:
            typed_node(cfg, key)
    _check_optimizer(cfg.get("optimizer"))


def check_required(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every ``???`` value still unset."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        hints = ", ".join(f"{key}=..." for key in missing)
        raise ConfigError(
            f"missing required value(s): {', '.join(missing)} (set {hints} on the command line)"
        )


def check_resolves(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first ``${...}`` that does not resolve, naming its key."""
    from omegaconf.errors import InterpolationResolutionError

    for name in map(str, cfg):
        if name == "hydra":
            continue
        try:
            OmegaConf.to_container(cfg._get_node(name), resolve=True)
        except InterpolationResolutionError as error:
            key = getattr(error, "full_key", None) or name
            raw = _raw_value(cfg, key)
            reason = first_line(error)
            paths = cfg.get("paths")
            known = f"; paths has: {', '.join(map(str, paths))}" if isinstance(paths, DictConfig) else ""
            raise ConfigError(f"{key}={raw} does not resolve: {reason}{known}") from None
        except Exception:
            continue  # not this check's business (a resolver only a running Hydra app has, ...)


def _raw_value(cfg: DictConfig, key: str) -> str:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return "?"
        node = node._get_node(part)
    return str(node._value()) if hasattr(node, "_value") else "?"


def _instantiable_nodes(node: Any, prefix: str) -> Iterator[tuple[str, DictConfig]]:
    """Every ``_target_`` node below ``node``, depth first, with its dotted key."""
    if isinstance(node, DictConfig):
        if "_target_" in node and prefix:
            yield prefix, node
        for name in map(str, node):
            if name.startswith("hydra"):
                continue
            child = node._get_node(name)
            if isinstance(child, DictConfig | ListConfig):
                yield from _instantiable_nodes(child, f"{prefix}.{name}" if prefix else name)
    elif isinstance(node, ListConfig):
        for index, child in enumerate(node):
            yield from _instantiable_nodes(child, f"{prefix}[{index}]")


def _missing_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig):
        for name in map(str, node):
            key = f"{prefix}.{name}" if prefix else name
            if OmegaConf.is_missing(node, name):
                yield key
            else:
                yield from _missing_keys(node._get_node(name), key)


def _check_run_options(cfg: DictConfig) -> None:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    devices = cfg.get("devices")
    if isinstance(devices, ListConfig):
        devices = OmegaConf.to_container(devices)
    if not _valid_devices(devices):
        raise ConfigError(f"devices={devices!r} is not valid: {_DEVICES_HELP}")

    num_nodes = cfg.get("num_nodes")
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise ConfigError(f"num_nodes={num_nodes!r} is not valid: use a positive integer")
    if num_nodes > 1 and not _multi_node_launcher():
        # without one, rank 0 would wait for the other nodes forever
        raise ConfigError(
            f"num_nodes={num_nodes} needs a launcher that starts this command on every node: torchrun "
            f"--nnodes={num_nodes} (scripts/torchrun.sh), SLURM srun (scripts/slurm.sbatch), or NODE_RANK and "
            "MASTER_ADDR set on each node; none was found"
        )

    accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    if cfg.get("accelerator") not in accelerators:
        raise ConfigError(
            f"accelerator={cfg.get('accelerator')!r} is not valid; allowed: {', '.join(accelerators)}"
        )

    name = _check_strategy(cfg.get("strategy"))
    _check_cpu_ranks(cfg, devices, num_nodes, name)
    _check_monitor(cfg)
    _check_groups_used(cfg)
    _check_stop_condition(cfg)

    checkpoint = cfg.get("ckpt_path")
    if checkpoint is not None and not Path(str(checkpoint)).expanduser().is_file():
        raise ConfigError(f"ckpt_path={checkpoint!r} is not a file: give the path of a .ckpt to resume from")

    resume = cfg.get("resume")
    if resume not in (None, False, "auto"):
        raise ConfigError(f"resume={resume!r} is not valid; allowed: auto, null")
    if resume == "auto" and checkpoint is not None:
        raise ConfigError("resume=auto and ckpt_path are alternatives: give one of them")

    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is not valid: use an integer in 0..4294967295")
    _check_trainer_numbers(cfg.get("trainer"))
    _check_splits(cfg.get("data"))
    _check_int_range(cfg, "")


def _check_strategy(strategy: Any) -> str:
    """The strategy's name, once it and its collective timeout are known to be valid."""
    from lightning.pytorch.strategies import StrategyRegistry

    name = strategy.get("name") if isinstance(strategy, DictConfig) else None
    strategies = sorted({"auto", *StrategyRegistry.available_strategies()})
    if name not in strategies:
        raise ConfigError(f"strategy.name={name!r} is not valid; allowed: {', '.join(strategies)}")
    timeout = strategy.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ConfigError(
            f"strategy.timeout_s={timeout!r} is not valid: use a number of seconds > 0, or null"
        )
    return str(name)


def _check_splits(data: Any) -> None:
    """An empty validation or test split of perfkit's datamodules: nothing to choose the best
    checkpoint by, or to report a held-out result on."""
    if not isinstance(data, DictConfig):
        return
    purpose = {
        "val_fraction": "the best checkpoint and monitor follow it",
        "test_fraction": "the run's result",
    }
    for key, why in purpose.items():
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
            raise ConfigError(
                f"data.{key}=0 leaves an empty {key.split('_')[0]} split ({why}): use a fraction in (0, 1)"
            )


# Trainer settings Lightning accepts without a word (or fails on deep inside fit, e.g. a
# ZeroDivisionError for accumulate_grad_batches=0): the smallest value each allows.
_TRAINER_MINIMUM = {
    "accumulate_grad_batches": 1,
    "log_every_n_steps": 1,
    "check_val_every_n_epoch": 1,
    "gradient_clip_val": 0,
    "min_epochs": 0,
    "max_steps": -1,
    "num_sanity_val_steps": -1,
}


def _check_trainer_numbers(trainer: Any) -> None:
    if not isinstance(trainer, DictConfig):
        return
    _check_something_trains(trainer)
    for key, minimum in _TRAINER_MINIMUM.items():
        value = trainer.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < minimum:
            raise ConfigError(f"trainer.{key}={value!r} is not valid: use a value >= {minimum}")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval <= 0:
        raise ConfigError(
            f"trainer.val_check_interval={interval!r} is not valid: use a fraction of an epoch in (0, 1], "
            "a number of batches >= 1, or null"
        )


def _check_something_trains(trainer: DictConfig) -> None:
    """Refuse a run that would train nothing (and report the random model's accuracy as a result), or
    whose limits contradict each other (Lightning would quietly obey one)."""
    nothing = {"max_epochs": 0, "max_steps": 0, "limit_train_batches": 0}
    for key, value in nothing.items():
        given = trainer.get(key)
        if isinstance(given, int | float) and not isinstance(given, bool) and given == value:
            raise ConfigError(
                f"trainer.{key}={given} trains nothing, and the run would report an untrained model: use a "
                "positive value (trainer.limit_train_batches takes a fraction or a number of batches)"
            )
    for low, high in (("min_epochs", "max_epochs"), ("min_steps", "max_steps")):
        least, most = trainer.get(low), trainer.get(high)
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (least, most))
        if numbers and most >= 0 and least > most:
            raise ConfigError(
                f"trainer.{low}={least} and trainer.{high}={most} contradict each other: Lightning would stop "
                f"at {high}; lower {low} or raise {high}"
            )


def _check_int_range(node: Any, prefix: str) -> None:
    """Integers past 64 bits (``trainer.max_epochs=99999999999999999999``) overflow torch and numpy."""
    children: list[tuple[str, Any]] = []
    if isinstance(node, DictConfig):
        names = [str(name) for name in node if not str(name).startswith("hydra")]
        children = [(f"{prefix}.{name}" if prefix else name, name) for name in names]
    elif isinstance(node, ListConfig):
        children = [(f"{prefix}[{index}]", index) for index in range(len(node))]
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 2**63:
        raise ConfigError(f"{prefix}={node} is out of range: integers must fit in 64 bits")
    for key, name in children:
        try:
            child = node[name]
        except Exception:  # an interpolation that does not resolve here: not this check's business
            continue
        _check_int_range(child, key)


def _multi_node_launcher() -> bool:
    """Whether a cluster environment Lightning knows (or a hand-set NODE_RANK) places this process."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    environments = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment)
    # Kubeflow's PyTorchJob sets the torch.distributed variables; Lightning can't detect it by itself
    variables = ("NODE_RANK", "GROUP_RANK")
    return any(v in os.environ for v in variables) or any(
        environment.detect() for environment in environments
    )


def _check_cpu_ranks(cfg: DictConfig, devices: Any, num_nodes: int, strategy: str) -> None:
    """Refuse far more CPU DDP processes than cores: each holds a model, data and a gloo group, and
    64 ranks on 2 cores filled 22 GB and crawled instead of failing."""
    import torch

    accelerator = cfg.get("accelerator")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    # Lightning's auto strategy is DDP as soon as there are several devices
    several_processes = strategy.startswith("ddp") or strategy == "auto"
    if not on_cpu or not several_processes or cfg.get("allow_oversubscription"):
        return
    if isinstance(devices, list):
        ranks = len(devices)
    elif isinstance(devices, str) and "," in devices:
        ranks = len([d for d in devices.split(",") if d.strip()])
    else:
        ranks = int(devices) if str(devices).lstrip("-").isdigit() and int(devices) > 0 else 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if ranks > 2 * cores:
        raise ConfigError(
            f"devices={ranks} starts {ranks} CPU processes per node but this machine has {cores} CPU core(s) "
            f"(at most {2 * cores} ranks are useful); lower devices, or set allow_oversubscription=true if "
            "you mean it"
        )


def _check_monitor(cfg: DictConfig) -> None:
    if "monitor_mode" in cfg and cfg.monitor_mode not in ("max", "min"):
        raise ConfigError(f"monitor_mode={cfg.monitor_mode!r} is not valid; allowed: max, min")
    if "monitor" in cfg and not (isinstance(cfg.monitor, str) and cfg.monitor.strip()):
        raise ConfigError(
            f"monitor={cfg.monitor!r} is not valid: name a metric your LightningModule logs (val/acc)"
        )


def _check_groups_used(cfg: DictConfig) -> None:
    """An ``optimizer``/``scheduler`` override reaches the model only through its config's
    ``optimizer: ${optimizer}`` key; a user's own LightningModule builds its own in
    ``configure_optimizers``, and the override would be recorded but ignored."""
    from hydra.core.hydra_config import HydraConfig

    model = cfg.get("model")
    if not HydraConfig.initialized() or not isinstance(model, DictConfig):
        return
    for override in task_overrides():
        key = override.split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0].split("/", 1)[0]
        if group in ("optimizer", "scheduler") and group not in model:
            raise ConfigError(
                f"{override}: {model.get('_target_')} takes no {group} (it builds its own in "
                f"configure_optimizers), so this override would be ignored; set it in your module, or add "
                f"'{group}: ${{{group}}}' to your model config and a {group} parameter to the module"
            )


def _check_stop_condition(cfg: DictConfig) -> None:
    """``max_epochs=-1`` trains until something else stops it: refuse it when nothing would."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or trainer.get("max_epochs") != -1:
        return
    max_steps = trainer.get("max_steps")
    early_stopping = any(
        str(node.get("_target_", "")).endswith("EarlyStopping")
        for node in (cfg.get("callbacks") or {}).values()
        if isinstance(node, DictConfig)
    )
    if (max_steps is None or max_steps == -1) and trainer.get("max_time") is None and not early_stopping:
        raise ConfigError(
            "trainer.max_epochs=-1 trains forever with nothing else to stop it: also set trainer.max_steps=N, "
            "+trainer.max_time=HH:MM:SS or callbacks=early_stopping, or give a positive max_epochs"
        )


def _check_optimizer(node: Any) -> None:
    """Build the optimizer on one dummy parameter, so torch's own checks (a negative learning rate,
    betas outside [0, 1), ...) fail now, in one line, not deep inside the first training step."""
    if not _is_instantiable(node) or not node.get("_partial_", False):
        return
    import torch
    from hydra.utils import instantiate

    try:
        target = _locate(str(node._target_))
    except ImportError:
        return  # check_node names the import problem
    if not (inspect.isclass(target) and issubclass(target, torch.optim.Optimizer)):
        return
    try:
        instantiate(node)([torch.nn.Parameter(torch.zeros(1))])
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigError(
            f"optimizer: {target.__name__} refuses these settings: {first_line(cause)}"
        ) from None


def _valid_devices(devices: Any) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return True
        if text.isdigit():
            return int(text) >= 1
        return re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text) is not None
    if isinstance(devices, list):
        return (
            bool(devices)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
            and len(set(devices)) == len(devices)
        )
    return False
