"""Shared behaviour of perfkit's datamodules: deterministic disjoint splits and DataLoader settings."""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, Subset


def split_indices(
    num_samples: int, *, val_fraction: float, test_fraction: float, split_seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Disjoint train/val/test index lists covering ``range(num_samples)``.

    The permutation depends only on ``split_seed`` (not on the run's seed), so every run, rank and
    model sees the same held-out samples.
    """
    n_test = round(num_samples * test_fraction)
    n_val = round(num_samples * val_fraction)
    if num_samples - n_val - n_test < 1:
        raise ValueError(f"no training samples left: {num_samples} samples, {n_val} val, {n_test} test")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(split_seed)).tolist()
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


class ClassificationDataModule(L.LightningDataModule, abc.ABC):
    """A labelled image dataset split into train/val/test, served by tuned DataLoaders.

    Subclasses say what the images are (:meth:`load_dataset`, :attr:`input_shape`,
    :attr:`num_classes`); this class owns splitting and loading, so every dataset gets the same
    split rules and loader options.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 1234,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in [0, 1) "
                "and leave some training data (sum < 1)"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.train_set: Dataset[Any] | None = None
        self.val_set: Dataset[Any] | None = None
        self.test_set: Dataset[Any] | None = None

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image as the model receives it."""

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of target classes."""

    @abc.abstractmethod
    def load_dataset(self) -> Dataset[Any]:
        """The whole labelled dataset (images already as tensors of :attr:`input_shape`)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        dataset = self.load_dataset()
        train, val, test = split_indices(
            len(dataset),  # type: ignore[arg-type]
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
        )
        self.train_set, self.val_set, self.test_set = (Subset(dataset, idx) for idx in (train, val, test))

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: Dataset[Any] | None, batch_size: int, *, shuffle: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self._pin_memory(),
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )

    def _pin_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        # on by default exactly when training on CUDA
        trainer = getattr(self, "trainer", None)
        return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)


class TensorImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images and labels held in memory as tensors: indexing is a slice, no per-sample decoding."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
