"""Inference candidates, measured: the trained module's network transformed (batch size, compile,
int8, channel pruning then a short fine-tune, bf16), timed interleaved against the untouched network
on the call it really receives, and scored with the module's own validation step."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

from perfkit.measure import time_interleaved
from perfkit.network import CaptureFirstCall, call_from_batch, get_network, network_path, with_network
from perfkit.optim import compile, prune, quantize
from perfkit.tune import runs
from perfkit.tune.candidates import Candidate
from perfkit.tune.selection import SKIPPED, Outcome
from perfkit.tune.training import paired
from perfkit.tune.workbench import Workbench, autocast


class InferenceMeasurement:
    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self._call: Any = None  # what the network is called with

    def measure(self, candidate: Candidate) -> Outcome:
        bench, keys = self.bench, candidate.settings
        if candidate.changes_numerics and bench.no_score:
            return Outcome(candidate, SKIPPED, f"no held-out metric to check it against: {bench.no_score}")
        module, path, call = self._network_call()
        baseline = get_network(module, path)
        network, holder = self._transformed(keys)
        precision = "bf16-mixed" if keys.get("precision") == "bf16" else None
        base_call = call.resized(bench.batch_size).to(bench.device)
        device = torch.device("cpu") if "quantize" in keys else bench.device
        cand_call = call.resized(keys.get("batch_size", bench.batch_size)).to(device)

        def forward(net: Any, inputs: Any, context: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode(), context():
                    inputs.run(net)

            return run

        with runs.quiet():
            timings = time_interleaved(
                {
                    "baseline": forward(baseline, base_call, contextlib.nullcontext),
                    "candidate": forward(network, cand_call, autocast(precision, bench.device)),
                },
                rounds=bench.settings.rounds,
                warmup=bench.settings.warmup,
                device=bench.device,
            )
        outcome = paired(
            candidate, timings["baseline"], bench.batch_size, timings["candidate"], cand_call.batch_size or 1
        )
        if candidate.changes_numerics:
            # a pruned model is fine-tuned: compare it with the baseline trained the same extra steps
            reference = self._finetuned_baseline() if "prune_channels" in keys else module
            outcome.baseline_accuracy = bench.score_of(reference)
            outcome.accuracy = bench.score_of(holder, precision)
            outcome.score_mode = bench.score.mode
        return outcome

    def _network_call(self) -> Any:
        """The network the candidates transform, and what it is called with (recorded while the
        module validates, else from a training batch)."""
        bench = self.bench
        module = bench.trained_model().to(bench.device).eval()
        path = network_path(module)
        if self._call is None:
            capture = CaptureFirstCall(get_network(module, path))
            try:
                if bench.val_batches:
                    runs.validate(module, bench.val_batches[:1], bench.device, None)
            finally:
                capture.remove()
            self._call = capture.call or call_from_batch(module, bench.train_batches[0])
            if self._call is None:
                raise ValueError(
                    f"no input for {type(module).__name__}'s network: no validation step to watch, no "
                    "example_input_array, and its batches are not (inputs, ...) tuples"
                )
        return module, path, self._call

    def _transformed(self, keys: dict[str, Any]) -> tuple[Any, Any]:
        """The transformed network and the module holding it (for its own validation)."""
        bench = self.bench
        module, path, call = self._network_call()
        network: Any = copy.deepcopy(get_network(module, path)).eval()
        if "prune_channels" in keys:
            with runs.quiet():
                example = call.resized(2).to(bench.device).args
                network = prune(
                    network, amount=keys["prune_channels"], method="channels", example_inputs=example
                )
            holder = copy.deepcopy(with_network(module, path, network)).train()
            bench.train_steps(holder, bench.settings.accuracy_steps // 2)  # a short fine-tune
            network = get_network(holder, path).eval()
        if "quantize" in keys:
            with runs.quiet():
                network = quantize(network.cpu(), backend=keys["quantize"])
        if "compile_mode" in keys:
            network = compile(network, mode=keys["compile_mode"])
        return network, with_network(module, path, network)

    def _finetuned_baseline(self) -> Any:
        bench = self.bench
        if "finetuned" not in bench.trained:
            model = copy.deepcopy(bench.trained_model()).train()
            bench.train_steps(model, bench.settings.accuracy_steps // 2)
            bench.trained["finetuned"] = model.eval()
        return bench.trained["finetuned"]
