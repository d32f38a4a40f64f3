"""Composing perfkit's configs (inside or outside a running Hydra app) and fitting the data/model
defaults to the classes a config names."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from perfkit.run import fresh_run_dir
from perfkit.targets import fit_defaults, own_option
from perfkit.targets import is_instantiable as _is_instantiable

log = logging.getLogger(__name__)


def config_dir() -> Path:
    """The directory holding ``train.yaml``, for an editable install or a wheel alike, or a source
    checkout on ``PYTHONPATH`` (the lent GPU machines run it that way)."""
    try:
        return Path(str(importlib.resources.files("perfkit.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "configs"


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


def instantiate_all(node: DictConfig | None, build: Callable[[DictConfig], Any]) -> list[Any]:
    """Build every ``_target_`` entry of a dict-of-named-entries group such as ``callbacks`` or ``logger``."""
    if node is None:
        return []
    return [build(child) for child in node.values() if _is_instantiable(child)]


def register_resolvers() -> None:
    """The resolvers perfkit's configs use (``${perfkit.run_dir:...}`` in ``hydra/default.yaml``)."""
    if not OmegaConf.has_resolver("perfkit.run_dir"):
        OmegaConf.register_new_resolver("perfkit.run_dir", fresh_run_dir)
