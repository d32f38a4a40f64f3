"""Model optimizations as plain functions over any ``nn.Module``.

Each returns a new model and leaves its input untouched, so the two can be compared side by side;
each attaches an :class:`OptimizationReport` (``perfkit.optim.reports(model)``).
"""

from perfkit.optim.compiling import CompiledModule, compile
from perfkit.optim.pruning import prune
from perfkit.optim.quantization import quantize
from perfkit.optim.report import OptimizationReport, reports

__all__ = ["CompiledModule", "OptimizationReport", "compile", "prune", "quantize", "reports"]
