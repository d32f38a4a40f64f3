"""Guard rails: importing perfkit stays cheap and side-effect free."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def test_import_perfkit_is_lean() -> None:
    out = _python(
        "import sys, time; t = time.perf_counter(); import perfkit; dt = time.perf_counter() - t; "
        "print(dt, 'wandb' in sys.modules, 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    seconds, *imported = out.split()
    assert float(seconds) < 2.0
    assert imported == ["False", "False", "False"]


def test_perfkit_modules_do_not_start_cuda_or_wandb() -> None:
    out = _python(
        "import sys, torch, perfkit.train, perfkit.data, perfkit.models, perfkit.callbacks; "
        "from perfkit.models import ImageClassifier, SmallCNN; "
        "ImageClassifier(SmallCNN, (1, 28, 28), 10); "
        "print(torch.cuda.is_initialized(), 'wandb' in sys.modules)"
    )
    assert out.split() == ["False", "False"]


def test_lazy_attributes() -> None:
    import perfkit

    assert perfkit.__version__
    assert issubclass(perfkit.ConfigError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        perfkit.nope  # noqa: B018
