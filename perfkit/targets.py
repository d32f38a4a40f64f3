"""What a ``_target_`` class takes, and fitting perfkit's group defaults to a user's class.

perfkit's ``data``/``model`` configs carry keys for perfkit's own classes (loader settings, a ``net``
factory, ``optimizer: ${optimizer}``). When a user names their own class (``model._target_=mypkg.Net``)
those keys must not leak into it: :func:`fit_defaults` leaves them out, at every depth, so the user's
class gets its own defaults, exactly as plain Hydra would build it from the user's own YAML.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

# keys Hydra's instantiate consumes itself
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
# parameters perfkit's commands pass to a model themselves (from the datamodule), not from the config
LINKED = frozenset({"input_shape", "num_classes"})


def locate(path: str) -> Any:
    """The object a ``_target_`` names, or ImportError with Hydra's first line."""
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as exc:
        raise ImportError(str(exc).splitlines()[0]) from None


def is_instantiable(value: Any) -> bool:
    return isinstance(value, DictConfig) and "_target_" in value


def signature(target: Any) -> tuple[dict[str, inspect.Parameter] | None, dict[str, Any]]:
    """Parameters and type hints of a callable; for a class whose ``__init__`` forwards ``**kwargs``
    to its base (``super().__init__(**kwargs)``), the base's parameters too. A chain that ends in
    ``**kwargs`` going nowhere visible adds a ``"**kwargs"`` entry (any keyword is allowed)."""
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
    parameters["**kwargs"] = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)
    return parameters, hints


def required(target: Any) -> list[str]:
    """The parameters ``target`` cannot be called without (its own signature: a base class's
    required parameter is the subclass's to pass)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        name
        for name, parameter in parameters.items()
        if parameter.kind in kinds and parameter.default is inspect.Parameter.empty and name != "self"
    ]


def is_perfkit_target(path: Any) -> bool:
    return str(path).startswith("perfkit.")


@dataclass
class Fitted:
    """What :func:`fit_defaults` changed in one node, for the run log."""

    key: str
    target: str
    left_out: list[str] = field(default_factory=list)
    own_defaults: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        parts = []
        if self.own_defaults:
            values = ", ".join(f"{name}={value!r}" for name, value in self.own_defaults.items())
            parts.append(f"uses its own defaults {values}")
        if self.left_out:
            parts.append(f"gets none of perfkit's {', '.join(self.left_out)}")
        return f"{self.key}: {self.target} {'; '.join(parts)}"


def own_option(config_dir: Path, group: str, option: Any) -> DictConfig | None:
    """perfkit's own ``group/option.yaml`` with its ``sub@_here_`` defaults merged in, or None when
    the option is not one of perfkit's files (the user's own config: every key in it is theirs)."""
    if not isinstance(option, str):
        return None
    path = config_dir / group / f"{option}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        return None
    base: Any = OmegaConf.create({})
    for entry in node.pop("defaults", []) or []:
        if isinstance(entry, DictConfig):
            for name, choice in entry.items():
                sub, _, package = str(name).partition("@")
                if package == "_here_":
                    sub_path = config_dir / group / sub / f"{choice}.yaml"
                    if sub_path.is_file():
                        base = OmegaConf.merge(base, OmegaConf.load(sub_path))
    merged = OmegaConf.merge(base, node)
    return merged if isinstance(merged, DictConfig) else None


def fit_defaults(
    node: DictConfig,
    own: DictConfig | None,
    key: str,
    *,
    named: Iterable[str],
    groups_named: Iterable[str] = (),
) -> list[Fitted]:
    """Fit ``node`` (a ``data``/``model`` node) to its ``_target_`` where its keys are perfkit's.

    ``own``: perfkit's file the node was composed from; a key is perfkit's when it is there with the
    same (unresolved) value and the command line did not set it (``named``: dotted keys;
    ``groups_named``: groups chosen there, ``optimizer=sgd``). For perfkit's own classes, only keys
    the class does not take are left out. For a user's class, every perfkit key is: one it has a
    default for gets that default (so ``config.yaml`` shows what it used), a required plain value
    stays, and a nested ``_target_`` node, ``${...}`` link or factory (``net``, ``optimizer``,
    ``scheduler``) is perfkit's only for perfkit's classes. Nested nodes are fitted the same way.
    """
    named = set(named)
    groups = set(groups_named)
    fitted: list[Fitted] = []
    _fit(node, own, key, named, groups, fitted, parent_is_perfkit=True)
    return [entry for entry in fitted if entry.left_out or entry.own_defaults]


def _fit(
    node: DictConfig,
    own: DictConfig | None,
    key: str,
    named: set[str],
    groups: set[str],
    fitted: list[Fitted],
    *,
    parent_is_perfkit: bool,
) -> None:
    target = str(node._target_)
    try:
        parameters, _ = signature(locate(target))
    except ImportError:
        return  # check_node names the import problem
    # perfkit's file with its own class, or another of perfkit's classes
    own_class = (own is not None and str(own.get("_target_")) == target) or is_perfkit_target(target)
    entry = Fitted(key, target)
    fitted.append(entry)
    explicit = {} if parameters is None else {n: p for n, p in parameters.items() if n != "**kwargs"}
    takes_any = parameters is None or "**kwargs" in parameters
    for name in [str(n) for n in node]:
        dotted = f"{key}.{name}"
        child = node._get_node(name)
        own_child = own._get_node(name) if isinstance(own, DictConfig) and name in own else None
        set_by_user = dotted in named or any(n.startswith(dotted + ".") for n in named)
        if set_by_user or own_child is None or not _same(child, own_child):
            # the user's (command line, their file, an overlay): kept, nested nodes fitted below it
            if set_by_user and is_instantiable(child):
                assert isinstance(child, DictConfig)
                _fit(
                    child,
                    own_child if isinstance(own_child, DictConfig) else None,
                    dotted,
                    named,
                    groups,
                    fitted,
                    parent_is_perfkit=own_class,
                )
            continue
        if name == "_partial_":
            # a factory is a contract with the parent that calls it: perfkit's classes
            if not parent_is_perfkit:
                _drop(node, name, entry)
        elif name in HYDRA_KEYS:
            continue
        elif own_class:
            if not takes_any and name not in explicit:
                _drop(node, name, entry)
        else:
            _fit_user_key(node, name, explicit.get(name), groups, entry)


def _fit_user_key(
    node: DictConfig, name: str, parameter: inspect.Parameter | None, groups: set[str], entry: Fitted
) -> None:
    """One of perfkit's keys in a node whose class is the user's."""
    child = node._get_node(name)
    linked = _is_link(child)
    if linked and _linked_group(child) in groups and parameter is not None:
        return  # `optimizer=sgd` on the command line: the user means it for their class too
    if parameter is None or linked or isinstance(child, DictConfig):
        _drop(node, name, entry)
    elif parameter.default is not inspect.Parameter.empty:
        default = _plain(parameter.default)
        if default is _UNSET:
            _drop(node, name, entry)
        else:
            with open_dict(node):
                node[name] = default
            entry.own_defaults[name] = default
    # a required plain parameter keeps perfkit's value: better than a missing argument


_UNSET = object()


def _plain(value: Any) -> Any:
    """``value`` as YAML can hold it (tuples as lists), or ``_UNSET``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return _UNSET if any(item is _UNSET for item in items) else items
    return _UNSET


def _drop(node: DictConfig, name: str, entry: Fitted) -> None:
    with open_dict(node):
        del node[name]
    if name != "_partial_":
        entry.left_out.append(name)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(
            OmegaConf.to_container(_wrap(a), resolve=False) == OmegaConf.to_container(_wrap(b), resolve=False)
        )
    except Exception:
        return False


def _wrap(node: Any) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        return node
    return OmegaConf.create({"value": node._value() if hasattr(node, "_value") else node})


def _is_link(node: Any) -> bool:
    """A whole-value interpolation such as ``${optimizer}``."""
    value = node._value() if hasattr(node, "_value") else node
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _linked_group(node: Any) -> str:
    value = node._value() if hasattr(node, "_value") else node
    return str(value)[2:-1].split(".", 1)[0]
