"""What ``perfkit.tune`` tries: the typed settings a candidate may set, and the candidates proposed
for a module on a device.

:data:`SETTINGS` is the one list of keys: whether each changes numerics (then it is judged by time to
the baseline's held-out accuracy, not by samples/s), and whether it is a ``perfkit.train`` config key
(then it goes into the tuned overlay). A :class:`Candidate` may only set keys listed there, and what
it changes follows from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from perfkit.schemas import Tune as TuneSettings

Mode = Literal["train", "inference"]


@dataclass(frozen=True)
class Setting:
    """One key a candidate sets."""

    key: str
    mode: Mode
    changes_numerics: bool
    train_config: bool  # a perfkit.train config key (the overlay); else a tuner-internal inference knob
    description: str


SETTINGS: tuple[Setting, ...] = (
    Setting("data.batch_size", "train", True, True, "per-rank training batch size"),
    Setting("data.num_workers", "train", False, True, "DataLoader workers per rank (the loader autotune)"),
    Setting("precision", "train", True, True, "Lightning precision (bf16-mixed, 16-mixed)"),
    Setting("optimize.compile", "train", False, True, "torch.compile the training step"),
    Setting("optimize.compile_mode", "train", False, True, "torch.compile mode"),
    Setting("optimize.channels_last", "train", False, True, "NHWC weights and activations"),
    Setting("optimizer.lr", "train", True, True, "learning rate scaled with the batch size"),
    Setting("model.warmup_steps", "train", True, True, "learning-rate warm-up of a larger batch"),
    Setting("batch_size", "inference", False, False, "serving batch size"),
    Setting("compile_mode", "inference", False, False, "perfkit.compile mode"),
    Setting("quantize", "inference", True, False, "int8 dynamic quantization backend"),
    Setting("prune_channels", "inference", True, False, "fraction of channels pruned, then fine-tuned"),
    Setting("precision", "inference", True, False, "autocast dtype"),
)
_BY_KEY: dict[tuple[str, str], Setting] = {(s.mode, s.key): s for s in SETTINGS}


def setting(mode: str, key: str) -> Setting:
    """The registered setting ``key`` of ``mode``; ValueError naming the allowed keys otherwise."""
    found = _BY_KEY.get((mode, key))
    if found is None:
        allowed = ", ".join(s.key for s in SETTINGS if s.mode == mode)
        raise ValueError(f"tune: {mode} setting {key!r} is not registered; allowed: {allowed}")
    return found


def changes_numerics(mode: str, keys: Iterable[str]) -> bool:
    return any(setting(mode, key).changes_numerics for key in keys)


def train_config_keys(*, numerics: bool | None = None) -> tuple[str, ...]:
    """The training settings that are config keys (only those that change numerics, or don't)."""
    return tuple(
        s.key
        for s in SETTINGS
        if s.mode == "train" and s.train_config and (numerics is None or s.changes_numerics == numerics)
    )


@dataclass
class Candidate:
    """One setting to try: what it changes, and what it is expected to gain and cost.

    ``changes_numerics`` follows from the keys in ``settings`` unless given (a test's shortcut)."""

    mode: str  # "train" or "inference"
    axis: str  # e.g. "precision", "compile", "batch_size", "quantization", "pruning", "num_workers"
    name: str  # e.g. "bf16-mixed"
    settings: dict[str, Any] = field(default_factory=dict)  # the config keys it sets
    expected_gain: float = 1.0  # a prior, only used to order candidates
    cost_s: float = 5.0  # estimated seconds to measure (compilation dominates)
    changes_numerics: bool | None = None

    def __post_init__(self) -> None:
        derived = changes_numerics(self.mode, self.settings)  # also refuses an unregistered key
        if self.changes_numerics is None:
            self.changes_numerics = derived


# priors that only order the candidates (largest expected gain per second of measuring first)
PRIORS = {
    ("train", "batch_size"): (1.3, 6.0),
    ("train", "precision"): (1.2, 6.0),
    ("train", "compile"): (1.2, 40.0),
    ("train", "channels_last"): (1.1, 6.0),
    ("inference", "pruning"): (1.8, 15.0),
    ("inference", "compile"): (1.5, 30.0),
    ("inference", "quantization"): (1.3, 8.0),
    ("inference", "precision"): (1.1, 5.0),
    ("inference", "batch_size"): (1.5, 5.0),
}


def propose(
    module: nn.Module, datamodule: Any, settings: TuneSettings, device: torch.device, batch_size: int
) -> list[Candidate]:
    """The candidates worth measuring for ``module`` on ``device``, in no particular order."""
    found: list[Candidate] = []

    def add(mode: str, axis: str, name: str, keys: dict[str, Any]) -> None:
        gain, cost = PRIORS[(mode, axis)]
        found.append(Candidate(mode, axis, name, keys, gain, cost))

    cuda = device.type == "cuda"
    # on CUDA, reduce-overhead replays the step as CUDA graphs (for launch-bound steps) and
    # max-autotune adds kernel autotuning to that; CPU has no graphs to replay
    compile_modes = (
        ("default", "reduce-overhead", "max-autotune") if cuda else ("default", "max-autotune-no-cudagraphs")
    )
    if "train" in settings.modes:
        factor = 2 if has_batch_size(datamodule) else settings.max_batch_factor + 1
        while factor <= settings.max_batch_factor:
            keys, rule = larger_batch(module, settings, batch_size, factor)
            add("train", "batch_size", f"{batch_size * factor} ({rule})", keys)
            factor *= 2
        add("train", "precision", "bf16-mixed", {"precision": "bf16-mixed"})
        if cuda:
            add("train", "precision", "16-mixed", {"precision": "16-mixed"})
        for mode in compile_modes:
            add("train", "compile", mode, {"optimize.compile": True, "optimize.compile_mode": mode})
        if any(isinstance(m, nn.Conv2d) for m in module.modules()):
            add("train", "channels_last", "channels_last", {"optimize.channels_last": True})
    if "inference" in settings.modes:
        _inference(add, settings, device, batch_size, compile_modes)
    return found


def _inference(
    add: Any, settings: TuneSettings, device: torch.device, batch_size: int, modes: Iterable[str]
) -> None:
    for size in sorted({1, 16, 256} - {batch_size}):
        add("inference", "batch_size", str(size), {"batch_size": size})
    for mode in modes:
        add("inference", "compile", mode, {"compile_mode": mode})
    if device.type != "cuda":
        import importlib.util  # only to ask whether the optional torchao is installed

        backends = ["torch_ao"] + (["torchao"] if importlib.util.find_spec("torchao") else [])
        for backend in backends:
            add("inference", "quantization", f"int8_dynamic/{backend}", {"quantize": backend})
    for amount in (0.25, 0.5):
        add("inference", "pruning", f"channels {amount:g}", {"prune_channels": amount})
    add("inference", "precision", "bf16", {"precision": "bf16"})


def larger_batch(
    module: Any, settings: TuneSettings, batch_size: int, factor: int
) -> tuple[dict[str, Any], str]:
    """A batch ``factor`` times larger takes fewer optimizer steps per epoch: the learning rate grows
    with it (linear scaling for SGD, square-root for adaptive optimizers such as Adam), ramped up
    linearly over the first steps where the module supports a warm-up."""
    keys: dict[str, Any] = {"data.batch_size": batch_size * factor}
    optimizer = getattr(module, "optimizer_factory", None)
    if optimizer is None:  # the module builds its own optimizer: its learning rate is its own
        return keys, "the module's own learning rate"
    base_lr = float(optimizer.keywords.get("lr", 1e-3)) if hasattr(optimizer, "keywords") else 1e-3
    linear = getattr(optimizer, "func", None) is torch.optim.SGD
    lr = base_lr * (factor if linear else factor**0.5)
    keys["optimizer.lr"] = float(f"{lr:.4g}")
    rule = f"lr {keys['optimizer.lr']:g}, {'linear' if linear else 'square-root'} scaling"
    if hasattr(module, "warmup_steps"):
        keys["model.warmup_steps"] = max(1, settings.accuracy_steps // 10)
        rule += f", {keys['model.warmup_steps']}-step warm-up"
    return keys, rule


def has_batch_size(datamodule: Any) -> bool:
    """Whether a batch-size setting (``data.batch_size``) reaches this datamodule."""
    hparams = getattr(datamodule, "hparams", {}) or {}
    return hasattr(datamodule, "batch_size") or "batch_size" in hparams
