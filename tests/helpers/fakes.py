"""Stand-ins for what tests need but should not build for real: a trainer's place in a DDP job, a
user's image folder, a clock that moves when told, broken checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any


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
