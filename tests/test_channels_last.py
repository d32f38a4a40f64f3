"""optimize.channels_last, and the training-optimization registry it was added through."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch

from perfkit.optim.training import (
    REGISTRY,
    ChannelsLast,
    TrainingOptimization,
    TrainingOptimizations,
    register,
)
from perfkit.schemas import TrainOptimize
from perfkit.train import train
from tests.helpers import FAST, ComposeTrain

ONE_EPOCH = [*FAST, "logger=none", "trainer.max_epochs=1", "data.num_workers=0"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]  # type: ignore[no-any-return]


def test_every_optimize_key_belongs_to_one_registered_optimization() -> None:
    owned = [name for entry in REGISTRY for name in (entry.name, *entry.fields)]
    assert sorted(owned) == sorted(f.name for f in dataclasses.fields(TrainOptimize))
    assert [entry.order for entry in REGISTRY] == sorted(entry.order for entry in REGISTRY)


def test_a_name_that_is_no_optimize_key_is_refused() -> None:
    class Typo(TrainingOptimization):
        name, order = "chanels_last", 99

    with pytest.raises(TypeError, match=r"'chanels_last' is not a field of schemas\.TrainOptimize"):
        register(Typo)
    with pytest.raises(TypeError, match="'channels_last' is registered already"):
        register(ChannelsLast)


def test_channels_last_trains_the_same_numbers_in_nhwc(compose_train: ComposeTrain, tmp_path: Path) -> None:
    """Only the memory order changes: the weights after an epoch equal the NCHW run's (up to the
    order of summation), and the run says how many weights it converted."""
    plain = train(compose_train(*ONE_EPOCH, output_dir=tmp_path / "nchw"))
    nhwc = train(compose_train(*ONE_EPOCH, "optimize.channels_last=true", output_dir=tmp_path / "nhwc"))
    assert "channels_last" not in plain["optimize"]
    assert nhwc["optimize"]["channels_last"]["converted_weights"] == 2  # SmallCNN's two convolutions
    a, b = (_weights(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("nchw", "nhwc"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)
    assert nhwc["test"]["acc"] == pytest.approx(plain["test"]["acc"], abs=0.01)


def test_channels_last_converts_at_setup_before_the_optimizer() -> None:
    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

    module, callback = Net(), ChannelsLast()
    parameter = module.conv.weight
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    assert module.conv.weight is parameter  # what the optimizer will hold
    assert parameter.is_contiguous(memory_format=torch.channels_last) and callback.converted == 1


def test_a_module_without_convolutions_is_told_nothing_changed() -> None:
    class Dense(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

    callback = ChannelsLast()
    with pytest.warns(UserWarning, match="Dense has no 4-D \\(convolution\\) weight: nothing to convert"):
        callback.setup(None, Dense(), "fit")  # type: ignore[arg-type]
    assert callback.converted == 0


def test_off_by_default_and_chosen_by_its_key() -> None:
    model = torch.nn.Conv2d(1, 1, 1)
    assert not [
        c for c in TrainingOptimizations.from_config(None).callbacks(model) if isinstance(c, ChannelsLast)
    ]
    chosen = TrainingOptimizations.create(channels_last=True, compile=True).callbacks(model)
    assert [type(c).__name__ for c in chosen] == ["ChannelsLast", "CompileForward"]  # layout before compile
