"""Reading a Lightning checkpoint a user points at: one clear line when it is not one, or not this model's.

Lightning and torch would fail later with a traceback (``PytorchStreamReader failed reading zip
archive``, ``Error(s) in loading state_dict``), after the data was loaded and the processes started.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from perfkit.errors import ConfigError, first_line


def read_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """The checkpoint at ``path`` (memory-mapped: cheap for large files), or :class:`ConfigError`
    naming ``key`` (the setting that named the file) when it is empty, truncated or not a checkpoint."""
    import torch

    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file: give the path of a .ckpt written by Lightning")
    if path.stat().st_size == 0:
        raise ConfigError(f"{key}: {path} is empty (0 bytes): the run that wrote it was cut off; use another")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # legacy format
    except Exception as error:
        reason = first_line(error)
        raise ConfigError(
            f"{key}: {path} cannot be read as a checkpoint, it is truncated or not one ({reason})"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{key}: {path} is not a Lightning checkpoint (it has no 'state_dict')")
    return checkpoint


def check_fits(checkpoint: dict[str, Any], model: Any, key: str, path: Path) -> None:
    """Refuse a checkpoint whose weights do not fit ``model``: another model, or other shapes."""
    saved = _comparable(checkpoint["state_dict"])
    expected = _comparable(model.state_dict())
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = sorted(name for name in set(saved) & set(expected) if saved[name] != expected[name])
    if not (missing or unexpected or reshaped):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) missing, e.g. {', '.join(missing[:2])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown weight(s), e.g. {', '.join(unexpected[:2])}")
    if reshaped:
        name = reshaped[0]
        problems.append(f"{len(reshaped)} of other shape, e.g. {name} {saved[name]} vs {expected[name]}")
    raise ConfigError(
        f"{key}: {path} holds another model's weights ({'; '.join(problems)}): give a checkpoint of this "
        "model config, or the model=... it was trained with"
    )


def _comparable(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes, with the wrappers that rename weights (torch.compile, pruning masks)
    taken out."""
    shapes = {}
    for name, value in state.items():
        if name.endswith("_mask"):
            continue
        clean = name.replace("_orig_mod.", "").removesuffix("_orig")
        shapes[clean] = tuple(getattr(value, "shape", ()))
    return shapes


_PLAIN = (type(None), bool, int, float, str)


def holds_objects(*modules: Any) -> list[str]:
    """The hyper-parameters of ``modules`` (LightningModule, DataModule) that torch's
    ``weights_only=True`` loading refuses: modules, partials, classes (``save_hyperparameters()`` on a
    module that takes ``net: nn.Module`` stores the network object in every checkpoint)."""
    found = []
    for module in modules:
        hparams = getattr(module, "hparams", None) or {}
        found += [str(name) for name, value in dict(hparams).items() if not _plain_value(value)]
    return found


def _plain_value(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_plain_value(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain_value(item) for key, item in value.items())
    return False


def weights_only_for(*modules: Any) -> bool | None:
    """What to pass Lightning as ``weights_only`` when it restores a checkpoint of ``modules``: None
    (torch's safe default) unless their hyper-parameters hold objects, then False (the run wrote or
    was pointed at that checkpoint; it is loaded as Lightning's own ``load_from_checkpoint`` would)."""
    return False if holds_objects(*modules) else None


class RandomState:
    """Lightning callback state: every random generator's state (torch CPU and CUDA, numpy, Python),
    saved in each checkpoint and restored on resume, so a resumed run continues the same random
    stream (dropout masks, shuffling) as the uninterrupted one. Plain types only (lists of ints and
    tensors), so the checkpoint still loads with ``weights_only=True``."""

    @staticmethod
    def capture() -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        name, keys, position, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [str(name), [int(k) for k in keys], int(position), int(has_gauss), float(cached)],
            "python": [int(version), list(internal), gauss],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def restore(state: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        torch.set_rng_state(state["torch"])
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_io() -> Any:
    """Lightning's checkpoint writer, with the checkpoint's path on a failed write (a full disk):
    Lightning's error names neither the file nor the cause's errno."""
    return _named_checkpoint_io()()


@functools.cache
def _named_checkpoint_io() -> type:
    """The class, made on first use (it subclasses Lightning's, which this module does not import
    up front) and reachable as ``perfkit.checkpoint.NamedCheckpointIO``: ddp_spawn pickles it."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class NamedCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            try:
                super().save_checkpoint(checkpoint, path, storage_options)
            except OSError as error:
                # Lightning writes to a temporary file and renames it: the previous checkpoint survives
                raise OSError(error.errno, error.strerror, str(path)) from error

    NamedCheckpointIO.__qualname__ = "NamedCheckpointIO"
    NamedCheckpointIO.__module__ = __name__
    return NamedCheckpointIO


def __getattr__(name: str) -> Any:
    if name == "NamedCheckpointIO":  # what unpickling in a spawned worker looks up
        return _named_checkpoint_io()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_atomically(value: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then renamed: a full disk never leaves half a file at ``path``."""
    import torch

    temporary = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(value, temporary)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:  # e.g. a value that cannot be pickled: no half-written file stays behind
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)


# what a resumed run may change: how fast data is loaded, not which data or what is trained on it
_LOADER_KEYS = frozenset(
    {"num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "device_resident",
     "resident_memory_fraction", "eval_batch_size"}
)  # fmt: skip


def check_resume_matches(cfg: Any, run_dir: Path) -> None:
    """``resume=auto`` continues the run in ``run_dir``: refuse, naming the first differing key, a
    model, optimizer, scheduler or dataset other than the one its ``config.yaml`` recorded (Lightning
    would load Adam's state into SGD and fail on ``KeyError: 'momentum'``, or go on with other data)."""
    from omegaconf import OmegaConf

    recorded_path = run_dir / "config.yaml"
    if not recorded_path.is_file():
        return
    recorded = OmegaConf.to_container(OmegaConf.load(recorded_path), resolve=False)
    current = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(recorded, dict) and isinstance(current, dict)
    for group in ("model", "optimizer", "scheduler", "data"):
        ignored = _LOADER_KEYS if group == "data" else frozenset()
        difference = _first_difference(recorded.get(group), current.get(group), group, ignored)
        if difference:
            raise ConfigError(
                f"resume=auto: {difference} differs from the interrupted run's ({recorded_path}); resume with "
                "the same settings (loader speed settings may change), or start a new run in another "
                "hydra.run.dir, with ckpt_path=... to start from its weights"
            )


def _first_difference(old: Any, new: Any, where: str, ignored: frozenset[str] = frozenset()) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key in ignored:
                continue
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    if old != new:
        return f"{where} ({old!r} then, {new!r} now)"
    return None
