"""Device-resident data: the same batches as the DataLoader, the auto decision, and the same training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from perfkit.data import DigitsDataModule, SyntheticDataModule
from perfkit.data.resident import DeviceBatches, decide
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain, attach_trainer

CPU = torch.device("cpu")


def _batches(loader: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]  # type: ignore[attr-defined]


def _assert_same(
    resident: list[tuple[torch.Tensor, torch.Tensor]], loader: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    assert len(resident) == len(loader) > 0
    for (x, y), (x_ref, y_ref) in zip(resident, loader, strict=True):
        assert y.dtype == y_ref.dtype == torch.int64
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


@pytest.mark.parametrize(("world_size", "rank"), [(1, 0), (3, 0), (3, 2)])
def test_resident_batches_are_the_dataloaders_batches(world_size: int, rank: int) -> None:
    """Every epoch's shuffled training batches and the exact (unpadded) evaluation batches."""
    modules = {
        name: DigitsDataModule(batch_size=48, eval_batch_size=70, device_resident=name == "resident")
        for name in ("resident", "loader")
    }
    loaders = {}
    for name, datamodule in modules.items():
        datamodule.setup()
        attach_trainer(datamodule, world_size=world_size, rank=rank)
        loaders[name] = (
            datamodule.train_dataloader(),
            datamodule.val_dataloader(),
            datamodule.test_dataloader(),
        )
    assert isinstance(loaders["resident"][0], DeviceBatches) and isinstance(loaders["loader"][0], DataLoader)
    for epoch in (0, 1):
        for name in loaders:  # what Lightning does at each epoch start
            loaders[name][0].sampler.set_epoch(epoch)
        _assert_same(_batches(loaders["resident"][0]), _batches(loaders["loader"][0]))
    for split in (1, 2):
        assert len(loaders["resident"][split]) == len(loaders["loader"][split])
        _assert_same(_batches(loaders["resident"][split]), _batches(loaders["loader"][split]))


def test_auto_keeps_tensor_datasets_that_fit_and_says_why() -> None:
    digits = DigitsDataModule()
    digits.setup()
    decision = decide("auto", digits.train_set, CPU, memory_fraction=0.25)
    assert decision.enabled and "MB" in decision.reason and decision.data_bytes > 0
    too_big = decide("auto", digits.train_set, CPU, memory_fraction=1e-12)
    assert not too_big.enabled and "over data.resident_memory_fraction=1e-12" in too_big.reason
    assert not decide(False, digits.train_set, CPU, 0.25).enabled
    synthetic = SyntheticDataModule(num_samples=32)
    synthetic.setup()
    computed = decide("auto", synthetic.train_set, CPU, 0.25)
    assert not computed.enabled and computed.reason == "SyntheticImages is not an in-memory tensor dataset"
    with pytest.raises(
        ValueError, match=r"device_resident=true needs an in-memory tensor dataset .*SyntheticImages"
    ):
        decide(True, synthetic.train_set, CPU, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_resident": "yes"}, "device_resident must be true, false or 'auto', got 'yes'"),
        ({"resident_memory_fraction": 0}, r"resident_memory_fraction must be in \(0, 1\], got 0"),
    ],
)
def test_resident_options_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


def test_training_on_resident_data_gives_the_loaders_numbers(
    compose_train: ComposeTrain, tmp_path: Path
) -> None:
    """Same batches, same math: the run's metrics do not depend on where the batches come from."""
    runs = {
        setting: train(
            compose_train(
                *FAST,
                "logger=none",
                "data=digits",
                f"data.device_resident={setting}",
                output_dir=tmp_path / setting,
            )
        )
        for setting in ("true", "false")
    }
    assert runs["true"]["data_loading"]["device_resident"]["enabled"] is True
    assert runs["false"]["data_loading"]["device_resident"] == {
        "enabled": False,
        "reason": "data.device_resident=false",
        "data_mb": 0.0,
    }
    for split in ("val", "test"):
        assert runs["true"][split] == pytest.approx(runs["false"][split], rel=1e-5)
    assert runs["true"]["train_samples_per_epoch"] == runs["false"]["train_samples_per_epoch"]


def test_profiles_count_resident_batches_as_data_time() -> None:
    """The same range a DataLoader records around each batch, so the step breakdown sees data wait."""
    from torch.profiler import ProfilerActivity, profile

    from perfkit.measure import quiet_profiler_logs
    from perfkit.profiling.breakdown import _DATA

    digits = DigitsDataModule(batch_size=100, device_resident=True)
    digits.setup()
    loader = digits.train_dataloader()
    with quiet_profiler_logs(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        batches = sum(1 for _ in loader)
    ranges = [event for event in profiler.events() if _DATA.match(event.name)]
    assert batches == len(loader) and len(ranges) == batches


def test_forcing_residency_on_computed_samples_is_a_config_error(compose_train: ComposeTrain) -> None:
    from perfkit.config import ConfigError

    cfg = compose_train(*FAST, "logger=none", "data=synthetic", "data.device_resident=true")
    with pytest.raises(ConfigError, match="device_resident=true needs an in-memory tensor dataset"):
        train(cfg)
