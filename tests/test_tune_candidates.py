"""perfkit.tune.candidates: the one list of settings a candidate may set, and what follows from it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from perfkit.models import MLP, ImageClassifier, SmallCNN
from perfkit.schemas import Tune as TuneSettings
from perfkit.tune.candidates import SETTINGS, Candidate, propose, train_config_keys
from perfkit.tune.report import TuneResult, tuned_overlay
from perfkit.tune.selection import Outcome


def test_what_a_candidate_changes_follows_from_its_keys() -> None:
    assert Candidate("train", "precision", "bf16-mixed", {"precision": "bf16-mixed"}).changes_numerics
    assert not Candidate("train", "compile", "default", {"optimize.compile": True}).changes_numerics
    assert Candidate("inference", "quantization", "x", {"quantize": "torch_ao"}).changes_numerics
    with pytest.raises(
        ValueError, match=r"train setting 'optimize\.compil' is not registered; allowed: data\.batch_size"
    ):
        Candidate("train", "compile", "typo", {"optimize.compil": True})


def test_every_training_setting_is_a_key_perfkit_train_accepts() -> None:
    """The overlay writes these keys into a Hydra config: each must exist in train.yaml's composition."""
    from perfkit.config import compose_config

    cfg = compose_config("train", [])
    for key in train_config_keys():
        node: object = cfg
        for part in key.split("."):
            assert part in node, f"{key} is no perfkit.train config key"  # type: ignore[operator]
            node = node[part]  # type: ignore[index]
    assert {s.mode for s in SETTINGS} == {"train", "inference"}


def test_channels_last_is_proposed_for_convolutions_only() -> None:
    settings = TuneSettings(modes=["train"])
    data = SimpleNamespace(batch_size=32)

    def axes(module: torch.nn.Module) -> set[str]:
        return {c.axis for c in propose(module, data, settings, torch.device("cpu"), 32)}

    assert "channels_last" in axes(ImageClassifier(SmallCNN, (1, 8, 8), 10))
    assert "channels_last" not in axes(ImageClassifier(MLP, (1, 8, 8), 10))


def test_a_chosen_channels_last_reaches_the_overlay(tmp_path: Path) -> None:
    candidate = Candidate("train", "channels_last", "channels_last", {"optimize.channels_last": True})
    outcome = Outcome(candidate, "accepted", speedup=1.2, ci_low=1.1, ci_high=1.3)
    result = TuneResult([outcome], {"train": dict(candidate.settings)}, {"train": outcome}, 1.0, 10.0, "cpu")
    overlay = tuned_overlay(result, tmp_path)
    assert "optimize:\n  channels_last: true" in overlay
