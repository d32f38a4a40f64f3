"""Device-resident data: an in-memory tensor dataset copied to the training device once, its batches
drawn there by indexing instead of being collated sample by sample and copied every step.

The batches are exactly the DataLoader's: the same sampler (a ``DistributedSampler`` for training,
so DDP keeps its per-rank shuffling; ``UnrepeatedDistributedSampler`` or sequential order for
evaluation, so metrics stay exact) cut into the same batch sizes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Subset

from perfkit.errors import ConfigError

log = logging.getLogger(__name__)

DeviceResident = bool | Literal["auto"]
# the range a DataLoader's iterator records around each batch: profiles count it as data time
_PROFILE_NAME = "enumerate(DataLoader)#DeviceBatches.__next__"
_NOTHING = contextlib.nullcontext()


@dataclass(frozen=True)
class ResidentDecision:
    """Whether a datamodule keeps its data on the device, and why (logged, and in metrics.json)."""

    enabled: bool
    reason: str
    data_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "reason": self.reason, "data_mb": round(self.data_bytes / 2**20, 2)}


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


def tensors_of(dataset: Dataset[Any] | None) -> tuple[torch.Tensor, torch.Tensor, list[int] | None] | None:
    """(images, labels, indices) behind a tensor dataset or a ``Subset`` of one; None for any other
    dataset (decoded files, generated samples, transforms: their samples must be computed)."""
    indices = None
    if isinstance(dataset, Subset):
        indices, dataset = list(dataset.indices), dataset.dataset
    if type(dataset) is not TensorImageDataset:  # a subclass may transform samples in __getitem__
        return None
    return dataset.images, dataset.labels, indices


def decide(
    requested: DeviceResident, dataset: Dataset[Any] | None, device: torch.device, memory_fraction: float
) -> ResidentDecision:
    """``requested`` (true, false or auto) applied to ``dataset`` on ``device``.

    ``auto`` keeps the data on the device when it is a tensor dataset whose bytes are at most
    ``memory_fraction`` of the device's free memory (CUDA) or of the machine's memory (CPU).
    """
    if requested is False:
        return ResidentDecision(False, "data.device_resident=false")
    found = tensors_of(dataset)
    if found is None:
        what = type(dataset.dataset if isinstance(dataset, Subset) else dataset).__name__
        if requested is True:
            raise ConfigError(
                f"data.device_resident=true needs an in-memory tensor dataset (TensorImageDataset); {what} "
                "computes its samples: use data.device_resident=auto or false"
            )
        return ResidentDecision(False, f"{what} is not an in-memory tensor dataset")
    images, labels, _ = found
    size = images.nbytes + labels.nbytes
    available = _memory_bytes(device)
    share = f"{size / 2**20:.1f} MB, {size / available:.1%} of the {device.type} memory available"
    if requested is True:
        return ResidentDecision(True, f"data.device_resident=true ({share})", size)
    if size > memory_fraction * available:
        return ResidentDecision(False, f"{share}: over data.resident_memory_fraction={memory_fraction}", size)
    return ResidentDecision(True, f"{share} (data.resident_memory_fraction={memory_fraction})", size)


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class DeviceBatches:
    """An iterable of ``(images, labels)`` batches drawn from tensors on the device.

    Lightning treats it as a dataloader: ``len`` gives the batches per epoch and its ``sampler``
    receives ``set_epoch`` each epoch, as a DataLoader's would.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        sampler: Any,
        device: torch.device,
    ) -> None:
        found = tensors_of(dataset)
        if found is None:
            raise ValueError(f"{type(dataset).__name__} is not a tensor dataset")
        images, labels, indices = found
        gather = torch.as_tensor(indices) if indices is not None else slice(None)
        # one copy, in the dataset's own order; the DataLoader path yields int64 labels (collated ints)
        self.images = images[gather].to(device)
        self.labels = labels[gather].to(device=device, dtype=torch.int64)
        self.batch_size = batch_size
        self.sampler = sampler
        self.batch_sampler = None  # as on a DataLoader that batches its sampler itself (Lightning reads it)
        self.device = device

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else len(self.labels)
        return math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is None:  # sequential: plain slices, no index tensor
            for start in range(0, len(self.labels), self.batch_size):
                with _labelled():
                    end = start + self.batch_size
                    batch = self.images[start:end], self.labels[start:end]
                yield batch
            return
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64).to(self.device, non_blocking=True)
        for start in range(0, len(order), self.batch_size):
            with _labelled():
                index = order[start : start + self.batch_size]
                batch = self.images[index], self.labels[index]
            yield batch


def _labelled() -> contextlib.AbstractContextManager[Any]:
    """The batch's profiler range while a profiler records (entering one costs ~9 us otherwise)."""
    return torch.profiler.record_function(_PROFILE_NAME) if torch.autograd._profiler_enabled() else _NOTHING
