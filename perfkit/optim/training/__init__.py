"""Optimizations applied during Lightning training, driven by the ``optimize`` config node.

    python -m perfkit.train optimize.compile=true
    python -m perfkit.train optimize.prune.amount=0.5 optimize.prune.method=channels optimize.prune.at_epoch=1
    python -m perfkit.train optimize.channels_last=true

One module per optimization, each a registered callback class (:mod:`perfkit.optim.training.base`);
importing this package registers them, in the order they apply.
"""

from __future__ import annotations

from perfkit.optim.training.base import REGISTRY, TrainingOptimization, TrainingOptimizations, register
from perfkit.optim.training.channels_last import ChannelsLast
from perfkit.optim.training.compile_forward import CompileForward
from perfkit.optim.training.pruning import PruneChannels, check_world_size, example_inputs, pruning_applied

__all__ = [
    "REGISTRY",
    "ChannelsLast",
    "CompileForward",
    "PruneChannels",
    "TrainingOptimization",
    "TrainingOptimizations",
    "check_world_size",
    "example_inputs",
    "pruning_applied",
    "register",
]
