"""Checks and small fixtures shared by several test files."""

from __future__ import annotations

import io

import torch
from torch import nn

from tests.helpers.runs import FAST


def one_line_error(code: int, err: str, *expected: str, status: int = 2) -> None:
    """``perfkit.train`` failed with ``status`` and exactly one error line (no traceback) holding ``expected``."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == status, err
    assert lines and lines[-1].startswith("perfkit.train: "), err
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("perfkit.train: ")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights, to show later that a transform left its input alone."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not hasattr(model, "perfkit_reports")


def round_trip(model: nn.Module) -> nn.Module:
    """``model`` through ``torch.save``/``torch.load``, as a user would ship it."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]


def classifier(correct: bool) -> nn.Linear:
    """Maps a one-hot input to its own class (or to the next one)."""
    linear = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        eye = torch.eye(4)
        linear.weight.copy_(eye if correct else eye.roll(1, dims=0))
    return linear


DIGITS = [*FAST, "data=digits", "model=mlp", "logger=none"]
