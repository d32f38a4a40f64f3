"""Config location and validation.

Hydra already rejects unknown group options (``model=nope``) and unknown keys (struct mode). What it
cannot know is what the ``_target_`` classes accept, so :func:`check_config` checks every instantiable
node against its target's signature (unknown keyword, wrong type, choices of a ``Literal``) and the
run-level shortcuts (``devices``, ``num_nodes``, ``accelerator``, ``strategy``) against what Lightning
supports, before anything is built. Every problem becomes one :class:`ConfigError` line that names
the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import inspect
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from perfkit.errors import ConfigError
from perfkit.schemas import NODES
from perfkit.schemas import register as register_schemas
from perfkit.targets import HYDRA_KEYS as _HYDRA_KEYS
from perfkit.targets import LINKED, fit_defaults, own_option, required
from perfkit.targets import is_instantiable as _is_instantiable
from perfkit.targets import locate as _locate
from perfkit.targets import signature as _signature

T = typing.TypeVar("T")
log = logging.getLogger(__name__)

__all__ = ["ConfigError", "check_config", "compose_config", "config_dir", "error_line", "fit_to_targets"]

_DEVICES_HELP = (
    "use a positive count (devices=2), -1 or 'auto' for all available, or a list of indices (devices=[0,1])"
)


def config_dir() -> Path:
    """The directory holding ``train.yaml``, for an editable install or a wheel alike, or a source
    checkout on ``PYTHONPATH`` (the lent GPU machines run it that way)."""
    try:
        return Path(str(importlib.resources.files("perfkit.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def compose_config(name: str, overrides: list[str], *, with_hydra: bool = False) -> DictConfig:
    """Compose one of perfkit's configs, inside a running Hydra app or outside one (``with_hydra``:
    keep the ``hydra`` node, launcher and sweeper included)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose(name, overrides=overrides, return_hydra_config=True)
    # fitted here, where the group choices are known (train() fits again only inside a Hydra app)
    for line in fit_to_targets(cfg, choices=dict(cfg.hydra.runtime.choices), overrides=overrides):
        log.info(line)
    if not with_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


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


def fit_to_targets(
    cfg: DictConfig, *, choices: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> list[str]:
    """Fit perfkit's ``data``/``model`` defaults to the classes the config names
    (:func:`perfkit.targets.fit_defaults`), so ``data._target_=mypkg.MyDataModule
    model._target_=mypkg.MyLitModule`` builds them from their own parameters and defaults. A key set on
    the command line is kept (so :func:`check_config` still names a typo). When the model takes no
    ``optimizer``/``scheduler``, those groups are set to null: the model builds its own.

    ``choices``/``overrides``: the group options and command line (Hydra's, inside a command).
    Returns one line per fitted node, for the run log.
    """
    choices, overrides = _hydra_choices(choices, overrides)
    named = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    groups_named = {key.split("/", 1)[0] for key in named if "." not in key}
    lines: list[str] = []
    for group in ("data", "model"):
        node = cfg.get(group)
        if not _is_instantiable(node):
            continue
        own = own_option(config_dir(), group, choices.get(group))
        fitted = fit_defaults(node, own, group, named=named, groups_named=groups_named)
        lines += [entry.line() for entry in fitted]
    model = cfg.get("model")
    if isinstance(model, DictConfig):
        raw = str(OmegaConf.to_container(model, resolve=False))
        unused = [g for g in ("optimizer", "scheduler") if cfg.get(g) is not None and "${" + g not in raw]
        if unused and not (set(unused) & groups_named):  # a chosen one is refused by check_config
            with open_dict(cfg):
                for group in unused:
                    cfg[group] = None
            lines.append(
                f"model: {model.get('_target_')} does not use perfkit's {' and '.join(unused)} group(s) (its "
                "config has its own, or configure_optimizers builds one): null in config.yaml"
            )
    return lines


def task_overrides() -> list[str]:
    """The command line's overrides as typed (``${...}`` in them left unresolved)."""
    from hydra.core.hydra_config import HydraConfig

    task = HydraConfig.get().overrides.task
    return [str(o) for o in OmegaConf.to_container(task, resolve=False)]  # type: ignore[union-attr]


def _hydra_choices(
    choices: dict[str, Any] | None, overrides: list[str] | None
) -> tuple[dict[str, Any], list[str]]:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if choices is None:
            choices = dict(hydra_cfg.runtime.choices)
        if overrides is None:
            overrides = task_overrides()
    return choices or {}, overrides or []


def typed_node(cfg: DictConfig, key: str) -> Any:
    """The ``key`` node (``optimize``, ``bench``, ``tune``) as its :mod:`perfkit.schemas` dataclass,
    checked; the schema's defaults where the config has no such node."""
    node = cfg.get(key)
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    return build_typed(NODES[key], values, key)  # type: ignore[arg-type]


def typed_root(cfg: DictConfig, schema: type[T]) -> T:
    """A command's own keys at the config root (``schema``'s fields), checked."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(schema)]  # type: ignore[arg-type]
    values = {}
    for name in names:
        if name in cfg:
            node = cfg[name]
            values[name] = (
                OmegaConf.to_container(node, resolve=True)
                if isinstance(node, DictConfig | ListConfig)
                else node
            )
    return build_typed(schema, values, "")


def build_typed(schema: type[T], values: dict[str, Any], key: str) -> T:
    """``schema(**values)``, or a :class:`ConfigError` naming the first unknown key, value outside a
    ``Literal``'s choices, wrong type or out-of-range value (the dataclass's ``__post_init__``)."""
    import dataclasses

    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}unknown option(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
    arguments: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = build_typed(hint, value, _dotted(key, name))  # type: ignore[arg-type]
        elif typing.get_origin(hint) is list:
            value = value if isinstance(value, list) else [value]  # bench.models=cnn means [cnn]
            (item_type,) = typing.get_args(hint)
            for item in value:
                _check_type(f"{_dotted(key, name)}: {item!r}", item, item_type, entry=True)
        else:
            _check_type(_dotted(key, name), value, hint)
        arguments[name] = value
    try:
        return schema(**arguments)
    except ValueError as error:
        raise ConfigError(_dotted(key, str(error))) from None


def _dotted(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


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
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
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


def check_node(node: DictConfig, key: str) -> None:
    """Check one ``_target_`` node's keys and value types against the target's signature."""
    target_path = node._target_
    try:
        target = _locate(target_path)
    except ImportError as exc:
        raise ConfigError(f"{key}._target_: cannot import {target_path!r} ({exc})") from None
    parameters, hints = _signature(target)
    if parameters is None:
        return
    accepts_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if not node.get("_partial_", False) and "_args_" not in node:
        missing = [
            name for name in required(target) if name not in node and not (key == "model" and name in LINKED)
        ]
        if missing:
            hint = (
                f" (e.g. {key}.{missing[0]}._target_=..., or your own {key} config: --config-dir DIR {key}=NAME)"
                if key in ("model", "data")
                else ""
            )
            raise ConfigError(
                f"{key}: {target_path} needs {', '.join(missing)}, which the config does not give{hint}"
            )
    for name in node:
        name = str(name)
        if name in _HYDRA_KEYS:
            continue
        if name not in parameters:
            if accepts_any_keyword:
                continue
            allowed = ", ".join(parameters)
            raise ConfigError(f"{key}.{name}: {target_path} has no parameter {name!r}; allowed: {allowed}")
        value = node[name]
        if _is_instantiable(value) or name not in hints:
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        _check_type(f"{key}.{name}", value, hints[name])


def _check_type(key: str, value: Any, annotation: Any, *, entry: bool = False) -> None:
    """``entry``: ``key`` already names the value (one entry of a list)."""
    from typeguard import TypeCheckError, check_type

    try:
        check_type(value, annotation)
    except TypeCheckError:
        if isinstance(value, list) and _fits_as_tuple(value, annotation):
            return  # YAML has no tuples: Hydra passes a list where a signature says tuple
        named = key if entry else f"{key}={value!r}"
        choices = _literal_choices(annotation)
        if choices is not None:
            raise ConfigError(f"{named} is not valid; allowed: {', '.join(choices)}") from None
        if annotation is bool:
            raise ConfigError(f"{named} is not valid: use true or false") from None
        raise ConfigError(f"{named} is not valid: expected {_describe(annotation)}") from None


def _fits_as_tuple(value: list[Any], annotation: Any) -> bool:
    from typeguard import TypeCheckError, check_type

    try:
        check_type(tuple(value), annotation)
    except TypeCheckError:
        return False
    return True


def _literal_choices(annotation: Any) -> list[str] | None:
    """``["null", "a", "b"]`` for ``Literal["a", "b"] | None``; None unless only choices are allowed."""
    leaves = _flatten_union(annotation)
    if not all(leaf is type(None) or typing.get_origin(leaf) is Literal for leaf in leaves):
        return None
    return list(
        dict.fromkeys("null" if leaf is type(None) else str(typing.get_args(leaf)[0]) for leaf in leaves)
    )


def _describe(annotation: Any) -> str:
    """A short human description of a type annotation; Literal choices are listed together."""
    origin = typing.get_origin(annotation)
    if origin not in (Literal, typing.Union, types.UnionType):
        if isinstance(annotation, type):
            return annotation.__name__
        return str(annotation).replace("typing.", "").replace("collections.abc.", "")
    choices: list[Any] = []
    kinds: list[str] = []
    optional = False
    for arg in _flatten_union(annotation):
        if arg is type(None):
            optional = True
        elif typing.get_origin(arg) is Literal:
            choices += [c for c in typing.get_args(arg) if c not in choices]
        else:
            kinds.append(_describe(arg))
    parts = [*kinds, *(["one of " + ", ".join(repr(c) for c in choices)] if choices else [])]
    return " or ".join(parts) + (" or null" if optional else "")


def _flatten_union(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _flatten_union(arg)]
    if typing.get_origin(annotation) is Literal:
        return [Literal[value] for value in typing.get_args(annotation)]
    return [annotation]


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
            f"optimizer: {target.__name__} refuses these settings: {_first_line(cause)}"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


def instantiate_all(node: DictConfig | None, build: Callable[[DictConfig], Any]) -> list[Any]:
    """Build every ``_target_`` entry of a dict-of-named-entries group such as ``callbacks`` or ``logger``."""
    if node is None:
        return []
    return [build(child) for child in node.values() if _is_instantiable(child)]


def error_line(error: BaseException) -> str:
    """One readable line for a configuration or construction error (Hydra wraps the latter)."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException):
        cause = error.__cause__ or error
        key = next(
            (line.split(":", 1)[1].strip() for line in str(error).splitlines() if "full_key:" in line), ""
        )
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return f"{key}: {message}" if key else message
    text = str(error)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the worker's own message
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def fresh_run_dir(parent: str) -> str:
    """``parent/<PERFKIT_RUN_ID>`` when set (every rank of a torchrun/SLURM job names the same one),
    else a new ``parent/<date>_<time>`` directory, created here so that two runs started in the same
    second get two directories (the second gets a ``-2`` suffix)."""
    run_id = os.environ.get("PERFKIT_RUN_ID")
    if run_id:
        return str(Path(parent) / run_id)
    if parent in _fresh_dirs:  # the config is resolved more than once in a process
        return _fresh_dirs[parent]
    import datetime

    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            candidate = Path(parent) / (stamp if attempt == 1 else f"{stamp}-{attempt}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            _fresh_dirs[parent] = str(candidate)
            return str(candidate)
    except OSError as error:
        # Hydra would print a traceback: one line, as for any other configuration error
        print(
            f"perfkit: error: cannot create a run directory under {parent} ({error.strerror or error}): "
            "choose a writable place with paths.log_dir=... or hydra.run.dir=...",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    raise SystemExit(f"perfkit: error: no free run directory name under {parent}")


_fresh_dirs: dict[str, str] = {}


def check_output_dir_overrides(program: str, argv: list[str] | None = None) -> None:
    """Refuse, in one line, a ``hydra.run.dir``/``hydra.sweep.dir`` override that can't be created:
    Hydra creates it before any perfkit code runs and would answer with a traceback."""
    for argument in sys.argv[1:] if argv is None else argv:
        key, _, value = argument.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in value:
            continue
        if not value.strip():
            # an unset shell variable (hydra.run.dir=$RUN): Hydra would write into the current directory
            print(
                f"{program}: error: {key}= is empty (an unset shell variable?): give a directory, or leave "
                f"{key} out for a new one under outputs/",
                file=sys.stderr,
            )
            raise SystemExit(2)
        problem = _unusable_directory(Path(value).expanduser().absolute())
        if problem:
            shown = value if len(value) <= 100 else f"{value[:60]}...({len(value)} characters)"
            print(f"{program}: error: {key}={shown}: {problem}; choose another directory", file=sys.stderr)
            raise SystemExit(2)


def _unusable_directory(path: Path) -> str | None:
    """Why a run directory at ``path`` cannot be created or written, or None."""
    name_max = 255
    with contextlib.suppress(OSError):
        name_max = os.pathconf("/", "PC_NAME_MAX")
    long_part = next((part for part in path.parts if len(part.encode()) > name_max), None)
    if long_part is not None:
        return f"a name in it is {len(long_part.encode())} bytes long, more than the file system's {name_max}"
    if len(str(path).encode()) >= 4096:
        return f"the path is {len(str(path).encode())} bytes long, more than the system's 4095"
    try:
        existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    except OSError as error:
        return error.strerror or str(error)
    if existing.is_symlink() and not existing.exists():
        return f"{existing} is a symbolic link to {os.readlink(existing)}, which does not exist"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def register_resolvers() -> None:
    """The resolvers perfkit's configs use (``${perfkit.run_dir:...}`` in ``hydra/default.yaml``)."""
    if not OmegaConf.has_resolver("perfkit.run_dir"):
        OmegaConf.register_new_resolver("perfkit.run_dir", fresh_run_dir)


# every entry point imports this module before Hydra composes its config
register_resolvers()
register_schemas()
