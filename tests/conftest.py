"""Shared fixtures: the real composed config, pinned to CPU and a few batches, and tiny image folders."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from perfkit.config import compose_config

# a short, quiet CPU run; tests add the overrides they are about
FAST = [
    "accelerator=cpu",
    "debug=fast",
    "trainer.enable_progress_bar=false",
]

ComposeTrain = Callable[..., DictConfig]
CLI = Callable[..., tuple[int, str]]


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


def attach_trainer(datamodule: Any, *, world_size: int, rank: int, num_nodes: int = 1) -> None:
    """What a (DDP) trainer on the CPU tells a datamodule about its place in the job."""
    import torch

    datamodule.trainer = SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        num_nodes=num_nodes,
        is_global_zero=rank == 0,
        accelerator=None,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


def make_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 12) -> Path:
    """``root/<class>/<n>.png`` with a distinct colour per class, like a user's ImageFolder data."""
    from PIL import Image

    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            colour = (40 * label + index, 200 - 30 * label, 17 * index % 255)
            Image.new("RGB", (size + index, size), colour).save(folder / f"{index}.png")
    return root


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


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 300,
    module: str = "perfkit.train",
    extra_env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run ``python -m <module>`` (perfkit.train by default) in a fresh interpreter, as a user would."""
    import subprocess

    # the repository root on the path, so configs may name test helpers (tests.toy_models...)
    root = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    env.update(extra_env or {})
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return completed.returncode, completed.stdout, completed.stderr


def run_failure(err: str, lines: int = 60) -> str:
    """An assertion message for a failed :func:`run_cli`: stderr's last line first (pytest's summary
    shows only the first), then its last ``lines`` lines."""
    tail = err.strip().splitlines()[-lines:] or ["(no stderr)"]
    return "\n".join([tail[-1], "--- the end of stderr:", *tail])


def free_port() -> int:
    """A TCP port nothing listens on now (for a DDP master or a TensorBoard server)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakeClock:
    """A clock that moves only when told: ``clock()`` reads it, ``clock.work(name, s)`` is a step that
    takes ``s`` seconds (and records that it ran)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def work(self, name: str, seconds: float) -> Callable[[], None]:
        def run() -> None:
            self.calls.append(name)
            self.now += seconds

        return run


def broken_checkpoint(kind: str, tmp_path: Path) -> Path:
    """A ``.ckpt`` that is not a usable checkpoint, in one of the ways ``CHECKPOINTS`` names."""
    import torch
    from torch import nn

    path = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind in ("truncated", "other-model", "no-state-dict"):
        state = nn.Linear(3, 2).state_dict() if kind == "other-model" else {}
        payload: dict[str, Any] = {"state_dict": state} if kind != "no-state-dict" else {"weights": 1}
        torch.save(payload, path)
        if kind == "truncated":
            torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
            path.write_bytes(path.read_bytes()[:1500])
    elif kind == "directory":
        path.mkdir()
    return path


CHECKPOINTS = ["empty", "text", "random-bytes", "truncated", "other-model", "no-state-dict", "directory"]
CHECKPOINT_MESSAGES = {
    "empty": "is empty",
    "text": "cannot be read as a checkpoint",
    "random-bytes": "cannot be read as a checkpoint",
    "truncated": "cannot be read as a checkpoint",
    "other-model": "holds another model's weights",
    "no-state-dict": "is not a Lightning checkpoint",
    "directory": "is not a file",
}
