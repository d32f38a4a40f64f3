"""Model optimizations as plain functions over any ``nn.Module``.

Each returns a new model and leaves its input untouched, so the two can be compared side by side;
each attaches an :class:`OptimizationReport` (``perfkit.optim.reports(model)``).
"""

from perfkit.optim.compiling import CompiledModule, compile
from perfkit.optim.exporting import ExportError, export, load
from perfkit.optim.pruning import prune
from perfkit.optim.quantization import quantize
from perfkit.optim.report import OptimizationReport, reports

__all__ = [
    "CompiledModule",
    "ExportError",
    "OptimizationReport",
    "compile",
    "export",
    "load",
    "prune",
    "quantize",
    "reports",
]
