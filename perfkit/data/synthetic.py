"""Generated images with a tunable CPU cost per sample, for data-loader benchmarks."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset

from perfkit.data.base import ClassificationDataModule


class SyntheticImages(Dataset[tuple[torch.Tensor, int]]):
    """Deterministic, learnable images: a per-class prototype plus per-sample noise.

    Sample ``i`` is a pure function of ``(seed, i)``, so any worker or rank produces the same tensor
    for the same index. ``cpu_cost_ms`` burns that much CPU time in ``__getitem__`` (holding the GIL,
    as Python-side decoding and augmentation do), which is what makes loader workers worth having.
    """

    def __init__(
        self,
        num_samples: int,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        cpu_cost_ms: float = 0.0,
        noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.cpu_cost_s = cpu_cost_ms / 1000.0
        self.noise = noise
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = torch.randn(num_classes, *input_shape, generator=generator)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        if self.cpu_cost_s > 0:
            deadline = time.perf_counter() + self.cpu_cost_s
            while time.perf_counter() < deadline:
                pass
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(self.num_classes, (1,), generator=generator))
        image = self.prototypes[label] + self.noise * torch.randn(self.input_shape, generator=generator)
        return image, label


class SyntheticDataModule(ClassificationDataModule):
    """:class:`SyntheticImages` behind the standard perfkit splits and loaders."""

    def __init__(
        self,
        *,
        num_samples: int = 2048,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        cpu_cost_ms: float = 0.0,
        noise: float = 1.0,
        seed: int = 0,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if num_samples < 3 or image_size < 1 or channels < 1 or num_classes < 2 or cpu_cost_ms < 0:
            raise ValueError(
                "synthetic data needs num_samples >= 3, image_size >= 1, channels >= 1, num_classes >= 2 "
                f"and cpu_cost_ms >= 0; got {num_samples=}, {image_size=}, {channels=}, {num_classes=}, "
                f"{cpu_cost_ms=}"
            )
        self.num_samples = num_samples
        self._input_shape = (channels, image_size, image_size)
        self._num_classes = num_classes
        self.cpu_cost_ms = cpu_cost_ms
        self.noise = noise
        self.seed = seed

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._input_shape

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def load_dataset(self) -> SyntheticImages:
        return SyntheticImages(
            self.num_samples,
            self._input_shape,
            self._num_classes,
            cpu_cost_ms=self.cpu_cost_ms,
            noise=self.noise,
            seed=self.seed,
        )
