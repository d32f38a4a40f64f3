"""Config nodes as their typed dataclasses, and a ``_target_`` node's keys and value types checked
against the target's signature."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from perfkit.errors import ConfigError
from perfkit.schemas import NODES
from perfkit.targets import HYDRA_KEYS as _HYDRA_KEYS
from perfkit.targets import LINKED, required
from perfkit.targets import is_instantiable as _is_instantiable
from perfkit.targets import locate as _locate
from perfkit.targets import signature as _signature

T = typing.TypeVar("T")


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
