"""pytest-benchmark suite: every model x variant x device x batch size, inference and training step.

    pytest benchmarks/test_variants.py -o addopts="" --benchmark-json=variants.json
    pytest benchmarks/test_variants.py -o addopts="" --benchmark-autosave      # then, later:
    pytest benchmarks/test_variants.py -o addopts="" --benchmark-compare --benchmark-compare-fail=median:10%
    pytest benchmarks/test_variants.py -o addopts="" -k "cnn and inference and cpu"

Weights are random (speed does not depend on their values). pytest-benchmark times one test after
another; `python -m perfkit.bench` times the variants of a model interleaved, with accuracy beside
speed and ratios with confidence intervals. Each (mode, model, device, batch) is one group, so the
variants of a model sit in one table. PERFKIT_BENCH_MODELS (comma-separated) narrows the models.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from perfkit.bench.steps import step_function
from perfkit.bench.variants import MODELS, VARIANTS, Settings, build, network, skip_reason
from perfkit.measure import peak_memory_bytes
from perfkit.optim.report import count_parameters, serialized_size

SHAPE, CLASSES = (1, 28, 28), 10
SELECTED = [m for m in os.environ.get("PERFKIT_BENCH_MODELS", ",".join(MODELS)).split(",") if m]
INFERENCE_BATCHES = (1, 64)
TRAIN_BATCH = 64
WARMUP_CALLS = 3  # the first compiles; the next settle caches and the allocator
DEVICES = ("cpu", "cuda")

_built: dict[tuple[str, str], dict[str, nn.Module]] = {}


def _variant(model_name: str, variant: str, device: torch.device) -> nn.Module:
    """The variant on ``device``, built once per session from one random network per model."""
    cache = _built.setdefault((model_name, device.type), {})
    if variant not in cache:
        torch.manual_seed(0)
        if "eager" not in cache:
            cache["eager"] = network(model_name, SHAPE, CLASSES).to(device).eval()
        settings = Settings(example_inputs=torch.zeros(1, *SHAPE))
        cache[variant] = build(variant, cache["eager"], cache, settings)
    return cache[variant]


def _run(benchmark: Any, mode: str, model_name: str, variant: str, device_name: str, batch: int) -> None:
    device = torch.device(device_name)
    reason = skip_reason(variant, device, mode)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"{mode} {model_name} {device_name} batch {batch}"
    model = _variant(model_name, variant, device)
    images, labels = torch.randn(batch, *SHAPE), torch.randint(0, CLASSES, (batch,))
    step = step_function(model, (images,), device, mode, labels)

    def timed() -> None:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # time the kernels, not their launch

    for _ in range(WARMUP_CALLS):
        timed()
    benchmark(timed)
    benchmark.extra_info.update(
        model=model_name,
        variant=variant,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        batch_size=batch,
        parameters=count_parameters(model),
        size_bytes=serialized_size(model),
        peak_memory_bytes=peak_memory_bytes(step, device),
    )


@pytest.mark.parametrize("batch", INFERENCE_BATCHES)
@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model_name", SELECTED)
def test_inference(benchmark: Any, model_name: str, variant: str, device_name: str, batch: int) -> None:
    _run(benchmark, "inference", model_name, variant, device_name, batch)


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model_name", SELECTED)
def test_training_step(benchmark: Any, model_name: str, variant: str, device_name: str) -> None:
    _run(benchmark, "train", model_name, variant, device_name, TRAIN_BATCH)
