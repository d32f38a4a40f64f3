"""Config location and validation.

Hydra already rejects unknown group options (``model=nope``) and unknown keys (struct mode). What it
cannot know is what the ``_target_`` classes accept, so :func:`check_config` checks every instantiable
node against its target's signature (unknown keyword, wrong type, choices of a ``Literal``) and the
run-level shortcuts (``devices``, ``num_nodes``, ``accelerator``, ``strategy``) against what Lightning
supports, before anything is built. Every problem becomes one :class:`ConfigError` line that names
the key and what is allowed.
"""

from __future__ import annotations

import importlib.resources
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

# keys Hydra's instantiate consumes itself
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
_DEVICES_HELP = (
    "use a positive count (devices=2), -1 or 'auto' for all available, or a list of indices (devices=[0,1])"
)


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line naming the key and what is allowed."""


def config_dir() -> Path:
    """The directory holding ``train.yaml``, for an editable install or a wheel alike, or a source
    checkout on ``PYTHONPATH`` (the lent GPU machines run it that way)."""
    try:
        return Path(str(importlib.resources.files("perfkit.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose one of perfkit's configs, inside a running Hydra app or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(name, overrides=overrides)


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found in a composed config."""
    check_required(cfg)
    _check_run_options(cfg)
    for key, node in _instantiable_nodes(cfg, ""):
        check_node(node, key)


def check_required(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every ``???`` value still unset."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        hints = ", ".join(f"{key}=..." for key in missing)
        raise ConfigError(
            f"missing required value(s): {', '.join(missing)} (set {hints} on the command line)"
        )


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


def _check_type(key: str, value: Any, annotation: Any) -> None:
    from typeguard import TypeCheckError, check_type

    try:
        check_type(value, annotation)
    except TypeCheckError:
        raise ConfigError(f"{key}={value!r} is not valid: expected {_describe(annotation)}") from None


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


def _signature(target: Any) -> tuple[dict[str, inspect.Parameter] | None, dict[str, Any]]:
    """Parameters and type hints of a callable; for a class whose ``__init__`` forwards ``**kwargs``
    to its base (``super().__init__(**kwargs)``), the base's parameters too."""
    functions = [target.__init__ if inspect.isclass(target) else target]
    if inspect.isclass(target):
        functions = [
            cls.__dict__["__init__"]
            for cls in target.__mro__
            if cls is not object and "__init__" in cls.__dict__
        ]
    parameters: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for function in functions:
        try:
            own = dict(inspect.signature(function).parameters)
        except (TypeError, ValueError):  # builtins without a signature
            return (parameters or None), hints
        try:
            own_hints = typing.get_type_hints(function)
        except Exception:  # forward references only type checkers can see: check keys, not types
            own_hints = {}
        forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values())
        for name, parameter in own.items():
            if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            if name != "self" and name not in parameters:
                parameters[name] = parameter
                if name in own_hints:
                    hints[name] = own_hints[name]
        if not forwards:
            return parameters, hints
    # the chain ends in **kwargs that go nowhere we can see: any keyword is allowed
    parameters["**kwargs"] = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)
    return parameters, hints


def _locate(path: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as exc:
        raise ImportError(str(exc).splitlines()[0]) from None


def _is_instantiable(value: Any) -> bool:
    return isinstance(value, DictConfig) and "_target_" in value


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
    from lightning.pytorch.strategies import StrategyRegistry

    devices = cfg.get("devices")
    if isinstance(devices, ListConfig):
        devices = OmegaConf.to_container(devices)
    if not _valid_devices(devices):
        raise ConfigError(f"devices={devices!r} is not valid: {_DEVICES_HELP}")

    num_nodes = cfg.get("num_nodes")
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise ConfigError(f"num_nodes={num_nodes!r} is not valid: use a positive integer")

    accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    if cfg.get("accelerator") not in accelerators:
        raise ConfigError(
            f"accelerator={cfg.get('accelerator')!r} is not valid; allowed: {', '.join(accelerators)}"
        )

    strategy = cfg.get("strategy")
    name = strategy.get("name") if isinstance(strategy, DictConfig) else None
    strategies = sorted({"auto", *StrategyRegistry.available_strategies()})
    if name not in strategies:
        raise ConfigError(f"strategy.name={name!r} is not valid; allowed: {', '.join(strategies)}")

    from perfkit.optim.training import TrainingOptimizations

    try:
        TrainingOptimizations.from_config(cfg.get("optimize"))
    except ValueError as error:
        raise ConfigError(str(error)) from None

    checkpoint = cfg.get("ckpt_path")
    if checkpoint is not None and not Path(str(checkpoint)).expanduser().is_file():
        raise ConfigError(f"ckpt_path={checkpoint!r} is not a file: give the path of a .ckpt to resume from")

    resume = cfg.get("resume")
    if resume not in (None, False, "auto"):
        raise ConfigError(f"resume={resume!r} is not valid; allowed: auto, null")
    if resume == "auto" and checkpoint is not None:
        raise ConfigError("resume=auto and ckpt_path are alternatives: give one of them")

    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed={seed!r} is not valid: use an integer")


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
    return " ".join(str(error).split())
