"""perfkit.data.workers: loader worker caps, `num_workers=auto` and per-rank worker seeding."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from perfkit.data import SyntheticDataModule, workers
from perfkit.data.base import ClassificationDataModule
from tests.helpers import attach_trainer as _attach


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PERFKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_worker_budget_splits_cores_between_ranks() -> None:
    assert workers.worker_budget(1, cores=8) == 8
    assert workers.worker_budget(4, cores=8) == 2
    assert workers.worker_budget(4, cores=2) == 0


def test_requested_workers_are_capped_to_the_ranks_share(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    datamodule = SyntheticDataModule(num_samples=64, batch_size=8, num_workers=2)
    datamodule.setup()
    _attach(datamodule, world_size=2, rank=0)
    with caplog.at_level(logging.WARNING):
        assert datamodule.train_dataloader().num_workers == 1
    assert (
        "num_workers=2 per rank would oversubscribe the machine (2 rank(s) on this machine share 2 core(s)); using 1"
        in caplog.text
    )
    # two nodes of two ranks: still two ranks per machine
    two_nodes = SyntheticDataModule(num_samples=64, batch_size=8, num_workers=1)
    two_nodes.setup()
    _attach(two_nodes, world_size=4, rank=3, num_nodes=2)
    assert two_nodes.val_dataloader().num_workers == 1


class _Paced:
    """A fake loader whose batches take ``seconds[workers]`` each."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __iter__(self) -> Iterator[int]:
        for index in range(100):
            time.sleep(self.seconds)
            yield index


def test_measurement_ranks_candidates_by_speed() -> None:
    seconds = {0: 0.02, 1: 0.01, 2: 0.004}
    rates = workers.measure_worker_counts(
        lambda w: _Paced(seconds[w]), [0, 1, 2], batch_size=10, num_batches=5
    )
    assert set(rates) == {0, 1, 2}
    assert rates[2] > rates[1] > rates[0]
    assert rates[0] == pytest.approx(10 / 0.02, rel=0.5)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(0, [0]), (2, [0, 1, 2]), (5, [0, 1, 2, 3, 4, 5]), (16, [0, 1, 2, 3, 4, 6, 8, 12, 16]), (20, None)],
)
def test_auto_candidates_cover_small_counts_and_thin_out_above_four(budget: int, expected: Any) -> None:
    counts = workers.candidate_counts(budget)
    if expected is not None:
        assert counts == expected
    assert counts[0] == 0 and counts[-1] == budget and counts == sorted(set(counts))


def test_fastest_prefers_fewer_workers_within_tolerance() -> None:
    assert workers.fastest({0: 100.0, 1: 180.0, 2: 200.0}) == 2
    assert workers.fastest({0: 100.0, 1: 197.0, 2: 200.0}) == 1  # the extra process buys under 5%
    assert workers.fastest({0: 500.0, 1: 300.0, 2: 250.0}) == 0


def test_auto_measures_then_reuses_the_cached_choice(
    private_cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    datamodule = SyntheticDataModule(num_samples=256, batch_size=16, cpu_cost_ms=1.0, num_workers="auto")
    datamodule.setup()
    with caplog.at_level(logging.INFO):
        loader = datamodule.train_dataloader()
    choice = datamodule.worker_choice
    assert choice is not None and choice.source == "measured"
    assert set(choice.samples_per_s) == {0, 1, 2}
    assert loader.num_workers == choice.num_workers == workers.fastest(choice.samples_per_s)
    assert "num_workers=auto chose" in caplog.text and "samples/s" in caplog.text
    assert (private_cache / "num_workers.json").is_file()

    def no_measuring(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached answer should have been used")

    monkeypatch.setattr(workers, "measure_worker_counts", no_measuring)
    again = SyntheticDataModule(num_samples=256, batch_size=16, cpu_cost_ms=1.0, num_workers="auto")
    again.setup()
    assert again.train_dataloader().num_workers == choice.num_workers
    assert again.worker_choice is not None and again.worker_choice.source == "cached"
    # another batch size, or other data, is another question
    for other in (
        SyntheticDataModule(num_samples=256, batch_size=32, cpu_cost_ms=1.0, num_workers="auto"),
        SyntheticDataModule(num_samples=256, batch_size=16, cpu_cost_ms=3.0, num_workers="auto"),
    ):
        other.setup()
        with pytest.raises(AssertionError, match="cached answer"):
            other.train_dataloader()


def test_a_corrupt_cache_is_measured_again(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "available_cores", lambda: 1)
    private_cache.mkdir(parents=True)
    (private_cache / "num_workers.json").write_text("{not json")
    datamodule = SyntheticDataModule(num_samples=64, batch_size=16, num_workers="auto")
    datamodule.setup()
    datamodule.train_dataloader()
    assert datamodule.worker_choice is not None and datamodule.worker_choice.source == "measured"


class _RandomDraws(Dataset[torch.Tensor]):
    """Returns a fresh random number per item: what augmentation would draw."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(())


class _RandomDataModule(ClassificationDataModule):
    input_shape = (1, 1, 1)
    num_classes = 2

    def load_dataset(self) -> Dataset[Any]:
        return _RandomDraws()


def _draws(rank: int, seed: int = 3) -> list[float]:
    datamodule = _RandomDataModule(batch_size=2, num_workers=2, val_fraction=0.0, test_fraction=0.0)
    datamodule.setup()
    _attach(datamodule, world_size=2, rank=rank)
    torch.manual_seed(seed)
    return [float(value) for batch in datamodule.train_dataloader() for value in batch]


def test_workers_of_every_rank_draw_different_reproducible_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "available_cores", lambda: 4)
    rank0, rank1 = _draws(0), _draws(1)
    assert _draws(0) == rank0  # reproducible
    assert len(set(rank0)) == len(rank0)  # the two workers of one rank differ
    assert not set(rank0) & set(rank1)  # and no rank repeats another's numbers
    assert _draws(0, seed=4) != rank0
