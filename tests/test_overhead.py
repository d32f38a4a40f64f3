"""perfkit.overhead: the framework's per-step costs cut, with Lightning's behaviour kept."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from torch import nn

from perfkit.overhead import (
    LeanHooks,
    QuietProfiler,
    skip_gpu_probe_without_gpus,
    without_lightning_gpu_probe,
)
from tests.helpers import FAST, ComposeTrain

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def test_the_quiet_profiler_hands_out_one_shared_context() -> None:
    profiler = QuietProfiler()
    first, second = profiler.profile("[Callback]x.on_train_batch_end"), profiler.profile("other")
    assert first is second
    with first, second:  # re-entrant, as Lightning nests hook contexts
        pass
    assert profiler.summary() == ""


def test_training_uses_it_unless_a_profiler_is_asked_for(compose_train: ComposeTrain) -> None:
    from lightning.pytorch.profilers import SimpleProfiler

    from perfkit.build import build, build_trainer

    for overrides, expected in (([], QuietProfiler), (["profiler=simple"], SimpleProfiler)):
        cfg = compose_train(*FAST, "data=digits", "model=mlp", "logger=none", *overrides)
        _, model = build(cfg)
        trainer, _, _ = build_trainer(cfg, model, launched_at=0.0)
        assert type(trainer.profiler) is expected


class _Module(LeanHooks, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)


def test_lean_hooks_store_the_hook_name_directly_and_keep_module_registration() -> None:
    module = _Module()
    module._current_fx_name = "training_step"
    assert vars(module)["_current_fx_name"] == "training_step"
    module.head = nn.Linear(2, 1)  # still registered as a submodule, its parameters found
    assert "head" in dict(module.named_children())
    assert len(list(module.parameters())) == 4
    with pytest.raises(TypeError):  # nn.Module's checks still apply to everything else
        module.layer = "not a module"  # type: ignore[assignment]


def test_without_gpus_torchs_per_step_cuda_check_skips_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's optimizers ask whether an accelerator is available on every step; with Lightning's
    NVML setting each answer loaded the NVML library again (~85 us)."""
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)  # as pip's Linux wheels are
    assert skip_gpu_probe_without_gpus()
    assert os.environ[NVML_CHECK] == "0"

    def no_nvml() -> int:
        raise AssertionError("NVML was asked")

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", no_nvml)
    torch.accelerator.current_accelerator(check_available=True)
    assert not skip_gpu_probe_without_gpus()  # already done: nothing to change


def test_with_gpus_the_fork_safe_check_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    assert not skip_gpu_probe_without_gpus()
    assert os.environ[NVML_CHECK] == "1"


def test_a_hand_written_loop_runs_with_torchs_default_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NVML_CHECK, "1")
    with without_lightning_gpu_probe():
        assert NVML_CHECK not in os.environ
    assert os.environ[NVML_CHECK] == "1"


def test_a_program_exits_with_its_objects_frozen_whatever_main_did() -> None:
    import gc

    from perfkit.cli import run_program

    def failing_main() -> None:
        raise SystemExit(2)

    try:
        with pytest.raises(SystemExit):
            run_program(failing_main)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
