"""Benchmarks of model variants: ``perfkit.benchmark`` for your own models, ``python -m perfkit.bench``
for perfkit's matrix (model x variant x device x mode x batch size), ``... compare`` as a CI gate.

Loaded lazily, like ``perfkit`` itself, so that ``python -m perfkit.bench --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY_ATTRIBUTES = {
    "benchmark": "perfkit.bench.core",
    "BenchmarkReport": "perfkit.bench.report",
    "Row": "perfkit.bench.report",
    "MODELS": "perfkit.bench.variants",
    "VARIANTS": "perfkit.bench.variants",
}

if TYPE_CHECKING:
    from perfkit.bench.core import benchmark
    from perfkit.bench.report import BenchmarkReport, Row
    from perfkit.bench.variants import MODELS, VARIANTS

__all__ = ["MODELS", "VARIANTS", "BenchmarkReport", "Row", "benchmark"]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'perfkit.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
