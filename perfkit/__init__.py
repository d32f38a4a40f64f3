"""perfkit: make PyTorch Lightning models train and serve faster, and prove it with measurements.

Importing ``perfkit`` is deliberately cheap: it imports neither torch, Lightning nor wandb.
Public functions load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily, see __getattr__).
# Training is `perfkit.train.train(cfg)`: `perfkit.train` is the module `python -m perfkit.train` runs.
_LAZY_ATTRIBUTES = {
    "BenchmarkReport": "perfkit.bench",
    "ConfigError": "perfkit.config",
    "benchmark": "perfkit.bench",
    "compile": "perfkit.optim",
    "export": "perfkit.optim",
    "ExportError": "perfkit.optim",
    "prune": "perfkit.optim",
    "quantize": "perfkit.optim",
    "reports": "perfkit.optim",
    "tune": "perfkit.tune",
    "OptimizationReport": "perfkit.optim",
}

if TYPE_CHECKING:
    from perfkit.bench import BenchmarkReport, benchmark
    from perfkit.errors import ConfigError
    from perfkit.optim import ExportError, OptimizationReport, compile, export, prune, quantize, reports
    from perfkit.tune import tune

__all__ = [
    "BenchmarkReport",
    "ConfigError",
    "ExportError",
    "OptimizationReport",
    "__version__",
    "benchmark",
    "compile",
    "export",
    "prune",
    "quantize",
    "reports",
    "tune",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'perfkit' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    # `perfkit.tune` is a callable module (function and `python -m perfkit.tune` share the name)
    return module if module.__name__ == f"perfkit.{name}" else getattr(module, name)
