"""CUDA runs of the training job. Selected with `pytest -m gpu`; they skip without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from perfkit.train import train
from tests.conftest import FAST, ComposeTrain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_trains_on_cuda(compose_train: ComposeTrain, precision: str) -> None:
    cfg = compose_train(*FAST, "accelerator=cuda", "devices=1", f"precision={precision}", "logger=none")
    metrics = train(cfg)
    assert metrics["device"].startswith("cuda (")
    assert metrics["precision"] == precision
    assert 0 <= metrics["test"]["acc"] <= 1


def test_pin_memory_is_on_exactly_when_training_on_cuda(compose_train: ComposeTrain) -> None:
    from hydra.utils import instantiate

    from perfkit.train import build_strategy

    cfg = compose_train(*FAST, "accelerator=cuda")
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, strategy=build_strategy("auto"), logger=False)
    datamodule.trainer = trainer
    datamodule.setup()
    assert datamodule.train_dataloader().pin_memory is True
