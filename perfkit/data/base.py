"""Shared behaviour of perfkit's datamodules: deterministic disjoint splits and DataLoader settings."""

from __future__ import annotations

import abc
import functools
import logging
import os
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from perfkit.data import resident as resident_data
from perfkit.data import workers as worker_counts

log = logging.getLogger(__name__)

# loader options: they decide how fast data arrives, not what the data is
_LOADER_OPTIONS = frozenset(
    {
        "batch_size",
        "eval_batch_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "prefetch_factor",
        "device_resident",
        "resident_memory_fraction",
    }
)


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
        num_workers: int | Literal["auto"] = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        shuffle_seed: int | None = None,
        device_resident: resident_data.DeviceResident = "auto",
        resident_memory_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 (or null: batch_size), got {eval_batch_size}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in [0, 1) "
                "and leave some training data (sum < 1)"
            )
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got {num_workers!r}")
        if device_resident not in (True, False, "auto"):
            raise ValueError(f"device_resident must be true, false or 'auto', got {device_resident!r}")
        if not 0 < resident_memory_fraction <= 1:
            raise ValueError(f"resident_memory_fraction must be in (0, 1], got {resident_memory_fraction!r}")
        self.device_resident = device_resident
        self.resident_memory_fraction = resident_memory_fraction
        self._resident: resident_data.ResidentDecision | None = None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.shuffle_seed = shuffle_seed
        # what num_workers=auto chose (None until the first loader is built)
        self.worker_choice: worker_counts.WorkerChoice | None = None
        self._resolved_workers: int | None = None
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

    def dataset_key(self) -> str:
        """Identifies the data (not how it is loaded), for caching the ``num_workers=auto`` choice."""
        settings = {
            name: value
            for name, value in sorted(vars(self).items())
            if not name.startswith("_")
            and name not in _LOADER_OPTIONS
            and isinstance(value, int | float | str | bool | tuple)
        }
        return f"{type(self).__module__}.{type(self).__qualname__}{settings}"

    def train_dataloader(self) -> DataLoader[Any] | resident_data.DeviceBatches:
        # Always a DistributedSampler (one replica without DDP): the permutation depends only on the
        # shuffle seed and epoch, so N ranks with batch b see exactly the global batches that one
        # process with batch N*b sees, and a resumed run sees the order the interrupted one would have.
        world_size, rank = self._world()
        dataset = self._require(self.train_set)
        seed = (
            self.shuffle_seed if self.shuffle_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        )
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        return self._loader(dataset, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader[Any] | resident_data.DeviceBatches:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader[Any] | resident_data.DeviceBatches:
        return self._eval_loader(self.test_set)

    def _eval_loader(self, dataset: Dataset[Any] | None) -> DataLoader[Any] | resident_data.DeviceBatches:
        dataset = self._require(dataset)
        world_size, rank = self._world()
        # Lightning's default DistributedSampler pads the last batch with repeated samples, which
        # would count them twice in val/test metrics; this one gives each sample to exactly one rank.
        sampler = (
            UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
            if world_size > 1
            else None
        )
        return self._loader(dataset, self.eval_batch_size, sampler)

    @staticmethod
    def _require(dataset: Dataset[Any] | None) -> Dataset[Any]:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return dataset

    def resident(self) -> resident_data.ResidentDecision:
        """Whether batches come from tensors kept on the training device (``device_resident``);
        decided once, when the first loader is built, and logged."""
        if self._resident is None:
            trainer, device = self._trainer_or_none(), self._device()
            self._resident = resident_data.decide(
                self.device_resident, self.train_set, device, self.resident_memory_fraction
            )
            if trainer is None or trainer.is_global_zero:
                state = "on" if self._resident.enabled else "off"
                log.info("device-resident data %s (%s): %s", state, device, self._resident.reason)
        return self._resident

    def _loader(
        self, dataset: Dataset[Any], batch_size: int, sampler: Any
    ) -> DataLoader[Any] | resident_data.DeviceBatches:
        if self.resident().enabled:
            return resident_data.DeviceBatches(dataset, batch_size, sampler, self._device())
        workers = self.workers_per_rank()
        _, rank = self._world()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.uses_pin_memory(),
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            # distinct random streams in every worker of every rank, reproducible from the run's seed
            worker_init_fn=functools.partial(pl_worker_init_function, rank=rank) if workers > 0 else None,
        )

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) when used on its own."""
        trainer = self._trainer_or_none()
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _trainer_or_none(self) -> L.Trainer | None:
        return self.trainer

    def _device(self) -> torch.device:
        """Where training runs: the attached trainer's device, the CPU when used on its own."""
        trainer = self._trainer_or_none()
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _local_processes(self) -> int:
        """Training processes on this machine (DDP ranks per node)."""
        trainer = self._trainer_or_none()
        if trainer is None or trainer.world_size <= 1:
            return 1
        return max(1, trainer.world_size // max(1, trainer.num_nodes))

    def workers_per_rank(self) -> int:
        """The loader workers each rank starts: ``num_workers`` capped to the rank's share of the
        cores, or for ``auto`` the count measured fastest (decided once, by rank 0 for all ranks)."""
        if self._resolved_workers is None:
            local = self._local_processes()
            if self.resident().enabled:  # batches are drawn on the device: no loader workers
                self._resolved_workers = 0
            elif self.num_workers == "auto":
                self.worker_choice = self._choose_workers(local)
                self._resolved_workers = self.worker_choice.num_workers
            else:
                self._resolved_workers = worker_counts.cap_workers(self.num_workers, local)
        return self._resolved_workers

    def _choose_workers(self, local_processes: int) -> worker_counts.WorkerChoice:
        trainer = self._trainer_or_none()
        is_rank_zero = trainer is None or trainer.is_global_zero
        key = worker_counts.cache_key(self.dataset_key(), self.batch_size, local_processes)
        choice = worker_counts.read_cached(key) if is_rank_zero else None
        if trainer is not None and trainer.world_size > 1:
            choice = trainer.strategy.broadcast(choice, src=0)
        if choice is None:
            # every rank measures at once, so the timings include the other ranks' contention
            budget = worker_counts.worker_budget(local_processes)
            dataset = self._require(self.train_set)
            rates = worker_counts.measure_worker_counts(
                lambda workers: self._measurement_loader(dataset, workers),
                worker_counts.candidate_counts(budget),
                batch_size=self.batch_size,
                num_batches=max(4, min(16, len(dataset) // self.batch_size)),  # type: ignore[arg-type]
            )
            choice = worker_counts.WorkerChoice(worker_counts.fastest(rates), "measured", rates)
            if trainer is not None and trainer.world_size > 1:
                choice = trainer.strategy.broadcast(choice, src=0)
            if is_rank_zero:
                worker_counts.write_cached(key, choice)
        if is_rank_zero:
            log.info("num_workers=auto chose %d (%s):\n%s", choice.num_workers, choice.source, choice.table())
        return choice

    def _measurement_loader(self, dataset: Dataset[Any], workers: int) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=self.uses_pin_memory(),
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )

    def uses_pin_memory(self) -> bool:
        """``pin_memory`` if set; by default on exactly when training on CUDA."""
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self._trainer_or_none()
        return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)
