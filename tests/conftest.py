"""Fixtures only (shared helpers are in tests/helpers): the real composed config, pinned to CPU and a
few batches, the in-process command line, tiny image folders, a quiet environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from perfkit.config import compose_config
from tests.helpers import CLI, ComposeTrain, make_image_folder


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[ComposeTrain]:
    """Compose ``train.yaml`` as the CLI would, with the run directory under ``tmp_path``."""

    def _compose(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        cfg = compose_config("train", list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or tmp_path / "run")
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> CLI:
    """``python -m perfkit.train ARGS`` in this process (Hydra's real command line, no re-import cost);
    returns the exit status and stderr. The run directory is ``tmp_path/cli`` unless ARGS name one."""
    from hydra.core.global_hydra import GlobalHydra

    from perfkit.train import main

    def _run(*args: str) -> tuple[int, str]:
        GlobalHydra.instance().clear()
        run_dir = (
            [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={tmp_path / 'cli'}"]
        )
        monkeypatch.setattr(sys, "argv", ["perfkit.train", *args, *run_dir])
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
        return code, capsys.readouterr().err

    return _run


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # W&B must never try the network or prompt in tests
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # wandb stages offline artifacts and caches under the home directory otherwise
    wandb_home = tmp_path_factory.mktemp("wandb-home")
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(wandb_home / variable.lower()))
    # num_workers=auto answers cached by one test must not leak into the user's cache or other tests
    monkeypatch.setenv("PERFKIT_CACHE_DIR", str(tmp_path_factory.mktemp("perfkit-cache")))
    monkeypatch.delenv("PERFKIT_RUN_ID", raising=False)
