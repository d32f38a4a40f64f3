"""``perfkit.tune``: measure candidate settings on the user's model, data and hardware; keep what is faster.

Training candidates are timed as the user's own ``training_step`` plus the optimizer step, on real
batches of the datamodule, each against the default side by side (interleaved rounds, paired
ratios). Inference candidates are the model's forward pass. Settings that change numerics are trained
(or fine-tuned) for the same short run as the baseline from the same initial weights and batches, and
compared on held-out data. :mod:`perfkit.tune.selection` decides.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from perfkit.measure import Timing, median_confidence_interval, time_interleaved
from perfkit.schemas import Tune as TuneSettings
from perfkit.tune import runs
from perfkit.tune.selection import (
    ACCEPTED,
    REJECTED,
    SKIPPED,
    Budget,
    Candidate,
    Outcome,
    TuneInterrupted,
    pick,
    run_within_budget,
)

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """Every candidate's outcome, the chosen settings, and the tuned-vs-default comparison."""

    outcomes: list[Outcome]
    chosen: dict[str, dict[str, Any]]  # mode -> config keys
    final: dict[str, Outcome]  # mode -> tuned vs default, measured side by side
    elapsed_s: float
    budget_s: float
    device: str
    environment: dict[str, Any] = field(default_factory=dict)
    max_accuracy_drop: float = 0.5  # points: what every recommendation was held to
    # the chosen training settings checked over a full perfkit.train run (the CLI does this)
    verification: dict[str, Any] | None = None
    interrupted: bool = False  # Ctrl-C: the choice rests on the candidates measured before it


# priors that only order the candidates (largest expected gain per second of measuring first)
_PRIORS = {
    ("train", "batch_size"): (1.3, 6.0),
    ("train", "precision"): (1.2, 6.0),
    ("train", "compile"): (1.2, 40.0),
    ("train", "channels_last"): (1.1, 6.0),
    ("inference", "pruning"): (1.8, 15.0),
    ("inference", "compile"): (1.5, 30.0),
    ("inference", "quantization"): (1.3, 8.0),
    ("inference", "precision"): (1.1, 5.0),
    ("inference", "batch_size"): (1.5, 5.0),
}


class Tuner:
    """Measures the candidates for ``module`` (a LightningModule) on ``datamodule``."""

    def __init__(
        self,
        module: Any,
        datamodule: Any,
        settings: TuneSettings,
        progress: Callable[[Outcome], None] | None = None,
        *,
        monitor: str | None = None,
        monitor_mode: str = "max",
    ) -> None:
        from perfkit.monitoring import missing_stage

        self.settings = settings
        self.device = _device(settings.device)
        self.module = module
        self.datamodule = datamodule
        self.progress = progress
        self.budget = Budget(settings.budget_s, reserve_s=0.05 * settings.budget_s)
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.train_batches = _take(datamodule.train_dataloader(), 8)
        if not self.train_batches:
            raise ValueError("the datamodule gave no training batches")
        self.no_score = missing_stage("val", module, datamodule)
        self.val_batches = [] if self.no_score else _take(datamodule.val_dataloader(), 16)
        if not self.no_score and not self.val_batches:
            raise ValueError("the datamodule gave no validation batches")
        self.score = runs.Score(monitor or "val/acc", monitor_mode)
        self.batch_size = runs.batch_size_of(self.train_batches[0])
        self.initial_state = copy.deepcopy(module.state_dict())
        self._trained: dict[str, Any] = {}  # the short runs, by training setting
        self._curves: dict[str, list[tuple[int, float]]] = {}  # the monitored metric while training
        self._pool: Any = None
        self._call: Any = None  # what the network is called with (inference)

    # -- candidates -----------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        cuda = self.device.type == "cuda"
        conv = any(isinstance(m, nn.Conv2d) for m in self.module.modules())
        # on CUDA, reduce-overhead replays the step as CUDA graphs (for launch-bound steps) and
        # max-autotune adds kernel autotuning to that; CPU has no graphs to replay
        compile_modes = (
            ("default", "reduce-overhead", "max-autotune")
            if cuda
            else ("default", "max-autotune-no-cudagraphs")
        )
        found: list[Candidate] = []

        def add(mode: str, axis: str, name: str, settings: dict[str, Any], numerics: bool = False) -> None:
            gain, cost = _PRIORS[(mode, axis)]
            found.append(Candidate(mode, axis, name, settings, gain, cost, numerics))

        if "train" in self.settings.modes:
            factor = 2 if _has_batch_size(self.datamodule) else self.settings.max_batch_factor + 1
            while factor <= self.settings.max_batch_factor:
                size = self.batch_size * factor
                settings, rule = self._larger_batch(factor)
                add("train", "batch_size", f"{size} ({rule})", settings, numerics=True)
                factor *= 2
            add("train", "precision", "bf16-mixed", {"precision": "bf16-mixed"}, numerics=True)
            if cuda:
                add("train", "precision", "16-mixed", {"precision": "16-mixed"}, numerics=True)
            for mode in compile_modes:
                add("train", "compile", mode, {"optimize.compile": True, "optimize.compile_mode": mode})
            if cuda and conv:
                add("train", "channels_last", "channels_last", {"channels_last": True})
        if "inference" in self.settings.modes:
            for size in sorted({1, 16, 256} - {self.batch_size}):
                add("inference", "batch_size", str(size), {"batch_size": size})
            for mode in compile_modes:
                add("inference", "compile", mode, {"compile_mode": mode})
            if not cuda:
                import importlib.util

                # torchao is optional; without it there is nothing to measure
                backends = ["torch_ao"] + (["torchao"] if importlib.util.find_spec("torchao") else [])
                for backend in backends:
                    add(
                        "inference",
                        "quantization",
                        f"int8_dynamic/{backend}",
                        {"quantize": backend},
                        numerics=True,
                    )
            for amount in (0.25, 0.5):
                add("inference", "pruning", f"channels {amount:g}", {"prune_channels": amount}, numerics=True)
            add("inference", "precision", "bf16", {"precision": "bf16"}, numerics=True)
        return found

    def _larger_batch(self, factor: int) -> tuple[dict[str, Any], str]:
        """A batch ``factor`` times larger takes fewer optimizer steps per epoch: the learning rate grows
        with it (linear scaling for SGD, square-root for adaptive optimizers such as Adam), ramped up
        linearly over the first steps where the module supports a warm-up."""
        settings: dict[str, Any] = {"data.batch_size": self.batch_size * factor}
        optimizer = getattr(self.module, "optimizer_factory", None)
        if optimizer is None:  # the module builds its own optimizer: its learning rate is its own
            return settings, "the module's own learning rate"
        base_lr = float(optimizer.keywords.get("lr", 1e-3)) if hasattr(optimizer, "keywords") else 1e-3
        linear = getattr(optimizer, "func", None) is torch.optim.SGD
        lr = base_lr * (factor if linear else factor**0.5)
        settings["optimizer.lr"] = float(f"{lr:.4g}")
        rule = f"lr {settings['optimizer.lr']:g}, {'linear' if linear else 'square-root'} scaling"
        if hasattr(self.module, "warmup_steps"):
            settings["model.warmup_steps"] = max(1, self.settings.accuracy_steps // 10)
            rule += f", {settings['model.warmup_steps']}-step warm-up"
        return settings, rule

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> TuneResult:
        outcomes: list[Outcome] = []
        if "train" in self.settings.modes:
            outcomes.append(self._num_workers())
        try:
            outcomes += run_within_budget(
                self.candidates(),
                self._measure,
                self.budget,
                max_accuracy_drop=self.settings.max_accuracy_drop,
                on_done=self.progress,
            )
        except TuneInterrupted as stop:  # what was measured, without the final side-by-side run
            stop.result = self._result(outcomes + stop.outcomes, self._chosen(outcomes + stop.outcomes), {})
            stop.result.interrupted = True
            raise
        best = pick(outcomes)
        chosen = self._chosen(outcomes)
        if "train" in chosen:
            worker_outcome = next((o for o in outcomes if o.candidate.axis == "num_workers"), None)
            if worker_outcome is not None and worker_outcome.status == ACCEPTED:
                chosen["train"].update(worker_outcome.candidate.settings)
        final: dict[str, Outcome] = {}
        for mode, keys in chosen.items():
            step_keys = {k: v for k, v in keys.items() if k != "data.num_workers"}
            picked = [o for (m, _axis), o in best.items() if m == mode]
            if len(picked) == 1:  # one setting: its own side-by-side measurement is the answer
                final[mode] = picked[0]
            elif step_keys:
                together = self._final(mode, step_keys)
                outcomes.append(together)
                final[mode] = together
                if together.status != ACCEPTED:  # faster alone, not together: keep the best single one
                    single = max(picked, key=lambda o: o.speedup or 0.0)
                    log.warning(
                        "tuned %s settings together: %s; keeping the fastest single setting %s",
                        mode,
                        together.reason,
                        single.candidate.settings,
                    )
                    workers = {k: v for k, v in keys.items() if k == "data.num_workers"}
                    chosen[mode] = {**single.candidate.settings, **workers}
                    final[mode] = single
        return self._result(outcomes, chosen, final)

    def _chosen(self, outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
        chosen: dict[str, dict[str, Any]] = {mode: {} for mode in self.settings.modes}
        for (mode, _axis), outcome in pick(outcomes).items():
            chosen[mode].update(outcome.candidate.settings)
        return chosen

    def _result(
        self, outcomes: list[Outcome], chosen: dict[str, dict[str, Any]], final: dict[str, Outcome]
    ) -> TuneResult:
        from perfkit.system import environment

        return TuneResult(
            outcomes=outcomes,
            chosen=chosen,
            final=final,
            elapsed_s=self.budget.elapsed,
            budget_s=self.settings.budget_s,
            device=str(self.device),
            environment=environment(),
            max_accuracy_drop=self.settings.max_accuracy_drop,
        )

    def _final(self, mode: str, keys: dict[str, Any]) -> Outcome:
        """The chosen settings together against the defaults, side by side."""
        from perfkit.tune.selection import decide

        numerics = any(key in keys for key in ("data.batch_size", "precision", "optimizer.lr"))
        name = "+".join(f"{k}={v}" for k, v in keys.items())
        candidate = Candidate(mode, "together", name, keys, changes_numerics=numerics)
        try:
            outcome = self._measure(candidate)
        except Exception as error:
            return Outcome(candidate, "failed", f"{type(error).__name__}: {error}")
        return decide(outcome, self.settings.max_accuracy_drop)

    def _measure(self, candidate: Candidate) -> Outcome:
        if candidate.mode == "train":
            return self._measure_training(candidate)
        return self._measure_inference(candidate)

    # -- training -------------------------------------------------------------------------------

    def _num_workers(self) -> Outcome:
        candidate = Candidate("train", "num_workers", "auto", {})
        choose = getattr(self.datamodule, "workers_per_rank", None)
        if not callable(choose) or not hasattr(self.datamodule, "num_workers"):
            return Outcome(candidate, SKIPPED, "the datamodule is not a perfkit ClassificationDataModule")
        resident = getattr(self.datamodule, "resident", None)
        if callable(resident) and resident().enabled:
            return Outcome(candidate, SKIPPED, "batches come from device-resident data: no loader workers")
        previous = self.datamodule.num_workers
        self.datamodule.num_workers, self.datamodule._resolved_workers = "auto", None
        try:
            workers = int(choose())
        finally:
            self.datamodule.num_workers = previous
            self.datamodule._resolved_workers = None
        rates = getattr(self.datamodule.worker_choice, "samples_per_s", {}) or {}
        candidate.name, candidate.settings = str(workers), {"data.num_workers": workers}
        base = rates.get(previous if isinstance(previous, int) else 0)
        outcome = Outcome(
            candidate, ACCEPTED, "", samples_per_s=rates.get(workers), baseline_samples_per_s=base
        )
        if base and rates.get(workers):
            outcome.speedup = rates[workers] / base
        if workers == previous:
            outcome.status = REJECTED
            outcome.reason = f"the configured {previous} worker(s) already load fastest (loader autotune)"
            return outcome
        outcome.reason = (
            f"the loader autotune measured {workers} worker(s) fastest"
            + (f" ({outcome.speedup:.2f}x the configured {previous})" if outcome.speedup else "")
            + "; loading overlaps the step, so this gains only where loading is the bottleneck"
        )
        return outcome

    def _variant(self, keys: dict[str, Any]) -> Callable[[], list[float]]:
        """One timing run of ``keys``: a Trainer.fit over warm-up + timed batches of the module (the
        same object every round, so a compiled graph is reused); returns the timed step times."""
        from perfkit.optim.training import CompileForward

        module = self._fresh_module(keys)
        size = int(keys.get("data.batch_size", self.batch_size))
        batches = [self._batch(size)] * (self.settings.warmup + 4)
        compiler = (
            CompileForward(mode=keys.get("optimize.compile_mode", "default"))
            if keys.get("optimize.compile")
            else None
        )

        def run() -> list[float]:
            timer = runs.StepTimes(self.device)
            callbacks: list[Any] = [timer, *([compiler] if compiler else [])]
            limit = 1 if self.val_batches else 0  # an epoch-end scheduler may read a validation metric
            t = runs.trainer(
                self.device, keys.get("precision"), callbacks, max_epochs=1, limit_val_batches=limit
            )
            runs.fit(module, batches, self.val_batches[:1] or None, t)
            return timer.seconds[self.settings.warmup :] or timer.seconds

        return run

    def _fresh_module(self, keys: dict[str, Any]) -> Any:
        module = copy.deepcopy(self.module)
        module.load_state_dict(self.initial_state)
        if keys.get("channels_last"):
            module = module.to(memory_format=torch.channels_last)
        return module

    def _measure_training(self, candidate: Candidate) -> Outcome:
        if candidate.changes_numerics and self.no_score:
            return Outcome(candidate, SKIPPED, f"no held-out metric to check it against: {self.no_score}")
        base, run = self._variant({}), self._variant(candidate.settings)
        base(), run()  # warm-up rounds (compilation, allocator), not counted
        seconds = runs.interleaved_fits({"baseline": base, "candidate": run}, self.settings.rounds)
        size = int(candidate.settings.get("data.batch_size", self.batch_size))
        outcome = _paired(
            candidate,
            Timing("baseline", seconds["baseline"]),
            self.batch_size,
            Timing("candidate", seconds["candidate"]),
            size,
        )
        if candidate.changes_numerics:
            self._time_to_accuracy(
                outcome, Timing("baseline", seconds["baseline"]), Timing("candidate", seconds["candidate"])
            )
        return outcome

    def _time_to_accuracy(self, outcome: Outcome, base: Timing, timing: Timing) -> None:
        """Judge a setting that changes the numerics by the time it takes to reach the baseline's
        monitored metric from the same initial weights and samples (MLPerf Training's rule), not by
        samples/s: a larger batch takes fewer, and different, optimizer steps."""
        import statistics

        keys = outcome.candidate.settings
        base_curve = self._curve({}, self.settings.accuracy_steps, None)
        if not base_curve:
            raise ValueError(f"the module logged no {self.score.metric} in validation (set monitor=...)")
        baseline = base_curve[-1][1]
        target = self.score.target(baseline, self.settings.max_accuracy_drop)
        base_steps = next(step for step, value in base_curve if self.score.better_or_equal(value, target))
        size = int(keys.get("data.batch_size", self.batch_size))
        # up to twice the baseline's samples: a larger batch may need more epochs, not unlimited ones
        cap = max(1, math.ceil(2 * self.settings.accuracy_steps * self.batch_size / size))
        curve = self._curve(keys, cap, target)
        reached = next((step for step, value in curve if self.score.better_or_equal(value, target)), None)
        best = max if self.score.mode == "max" else min
        outcome.baseline_accuracy = baseline
        outcome.accuracy = best((value for _, value in curve), default=None)
        outcome.score_mode = self.score.mode
        outcome.baseline_time_to_accuracy_s = statistics.median(base.seconds) * base_steps
        if reached is None:
            outcome.status = REJECTED
            outcome.speedup = outcome.ci_low = outcome.ci_high = None
            outcome.reason = (
                f"never reached the baseline's {self.score.metric} {target:.4g} within {cap} steps "
                f"(twice its samples; best {outcome.accuracy})"
            )
            return
        outcome.accuracy = next(value for step, value in curve if step == reached)
        outcome.time_to_accuracy_s = statistics.median(timing.seconds) * reached
        ratios = [(b * base_steps) / (c * reached) for b, c in zip(base.seconds, timing.seconds, strict=True)]
        outcome.speedup = statistics.median(ratios)
        outcome.ci_low, outcome.ci_high = median_confidence_interval(ratios)
        outcome.steps_to_accuracy = (base_steps, reached)

    def _curve(self, keys: dict[str, Any], steps: int, target: float | None) -> list[tuple[int, float]]:
        """The monitored metric every few optimizer steps while a fresh copy trains under ``keys``
        (its learning rate and warm-up included) in a Trainer, stopping once ``target`` is reached."""
        cache_key = repr(sorted(keys.items()))
        if cache_key in self._curves:
            return self._curves[cache_key]
        module = self._fresh_module(keys)
        size = int(keys.get("data.batch_size", self.batch_size))
        lr = keys.get("optimizer.lr")
        curve = runs.Curve(self.score, target)
        callbacks: list[Any] = [curve, runs.LearningRate(lr, int(keys.get("model.warmup_steps", 0)))]
        batches = runs.stream(self._sample_pool(), size, steps)
        t = runs.trainer(
            self.device,
            keys.get("precision"),
            callbacks,
            max_epochs=1,
            val_check_interval=max(1, steps // 12),
        )
        runs.fit(module, batches, self.val_batches, t)
        self._curves[cache_key] = curve.points
        if not keys:
            self._trained["[]"] = module
        return curve.points

    def _sample_pool(self) -> Any:
        """Training samples for the accuracy runs, as one batch: twice the baseline run's, at most 256 MB."""
        if self._pool is None:
            wanted = 2 * self.settings.accuracy_steps * self.batch_size
            batches = list(self.train_batches)
            while len(batches) * self.batch_size < wanted:
                fresh = _take(self.datamodule.train_dataloader(), 10_000)
                if not fresh or len(batches) > 100_000:
                    break
                batches += fresh
            size = sum(runs.batch_size_of(b) for b in batches)
            leaves = [x for x in runs.tree_flatten(batches[0])[0] if isinstance(x, torch.Tensor)]
            per_sample = sum(x[0].numel() * x.element_size() for x in leaves if x.dim() > 0) or 1
            self._pool = runs.concat(batches, min(wanted, size, max(1, (256 << 20) // per_sample)))
        return self._pool

    def _score(self, module: Any, precision: str | None = None) -> float:
        metrics = runs.validate(module, self.val_batches, self.device, precision)
        if self.score.metric not in metrics:
            raise ValueError(
                f"the module logged no {self.score.metric} in validation (it logged: "
                f"{', '.join(metrics) or 'nothing'}); set monitor=... to one of them"
            )
        return metrics[self.score.metric]

    def _train(self, module: Any, steps: int) -> None:
        """``steps`` more optimizer steps of ``module`` (a short fine-tune) in a Trainer."""
        batches = runs.stream(self._sample_pool(), self.batch_size, steps)
        # one validation batch: an epoch-end scheduler (ReduceLROnPlateau) may read a validation metric
        limit = 1 if self.val_batches else 0
        t = runs.trainer(self.device, None, [], max_epochs=1, limit_val_batches=limit)
        runs.fit(module, batches, self.val_batches[:1] or None, t)

    # -- inference ------------------------------------------------------------------------------

    def _trained_model(self) -> Any:
        if "[]" not in self._trained:
            self._curves.pop(repr([]), None)
            self._curve({}, self.settings.accuracy_steps, None)
        return self._trained["[]"]

    def _network_call(self) -> Any:
        """The network the inference candidates transform, and what it is called with (recorded
        while the module validates, else from a training batch)."""
        from perfkit.network import CaptureFirstCall, call_from_batch, get_network, network_path

        module = self._trained_model().to(self.device).eval()
        path = network_path(module)
        if self._call is None:
            capture = CaptureFirstCall(get_network(module, path))
            try:
                if self.val_batches:
                    runs.validate(module, self.val_batches[:1], self.device, None)
            finally:
                capture.remove()
            self._call = capture.call or call_from_batch(module, self.train_batches[0])
            if self._call is None:
                raise ValueError(
                    f"no input for {type(module).__name__}'s network: no validation step to watch, no "
                    "example_input_array, and its batches are not (inputs, ...) tuples"
                )
        return module, path, self._call

    def _inference_model(self, keys: dict[str, Any]) -> tuple[Any, Any]:
        """The transformed network and the module holding it (for its own validation)."""
        from perfkit.network import get_network, with_network
        from perfkit.optim import compile, prune, quantize

        module, path, call = self._network_call()
        network: Any = copy.deepcopy(get_network(module, path)).eval()
        if "prune_channels" in keys:
            with runs.quiet():
                example = call.resized(2).to(self.device).args
                network = prune(
                    network, amount=keys["prune_channels"], method="channels", example_inputs=example
                )
            holder = copy.deepcopy(with_network(module, path, network)).train()
            self._train(holder, self.settings.accuracy_steps // 2)  # a short fine-tune
            network = get_network(holder, path).eval()
        if "quantize" in keys:
            with runs.quiet():
                network = quantize(network.cpu(), backend=keys["quantize"])
        if "compile_mode" in keys:
            network = compile(network, mode=keys["compile_mode"])
        return network, with_network(module, path, network)

    def _measure_inference(self, candidate: Candidate) -> Outcome:
        from perfkit.network import get_network

        keys = candidate.settings
        if candidate.changes_numerics and self.no_score:
            return Outcome(candidate, SKIPPED, f"no held-out metric to check it against: {self.no_score}")
        module, path, call = self._network_call()
        baseline = get_network(module, path)
        network, holder = self._inference_model(keys)
        precision = "bf16-mixed" if keys.get("precision") == "bf16" else None
        base_call = call.resized(self.batch_size).to(self.device)
        device = torch.device("cpu") if "quantize" in keys else self.device
        cand_call = call.resized(keys.get("batch_size", self.batch_size)).to(device)

        def forward(net: Any, inputs: Any, autocast: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode(), autocast():
                    inputs.run(net)

            return run

        with runs.quiet():
            timings = time_interleaved(
                {
                    "baseline": forward(baseline, base_call, contextlib.nullcontext),
                    "candidate": forward(network, cand_call, _autocast(precision, self.device)),
                },
                rounds=self.settings.rounds,
                warmup=self.settings.warmup,
                device=self.device,
            )
        outcome = _paired(
            candidate, timings["baseline"], self.batch_size, timings["candidate"], cand_call.batch_size or 1
        )
        if candidate.changes_numerics:
            # a pruned model is fine-tuned: compare it with the baseline trained the same extra steps
            reference = self._finetuned_baseline() if "prune_channels" in keys else module
            outcome.baseline_accuracy = self._score(reference)
            outcome.accuracy = self._score(holder, precision)
            outcome.score_mode = self.score.mode
        return outcome

    def _finetuned_baseline(self) -> Any:
        if "finetuned" not in self._trained:
            model = copy.deepcopy(self._trained_model()).train()
            self._train(model, self.settings.accuracy_steps // 2)
            self._trained["finetuned"] = model.eval()
        return self._trained["finetuned"]

    def _batch(self, size: int) -> Any:
        """``size`` real training samples, in the data's own batch structure."""
        return runs.concat(self.train_batches, size)


def _paired(candidate: Candidate, base: Timing, base_size: int, timing: Timing, size: int) -> Outcome:
    """Per-round ratios of time per sample, baseline over candidate, with a 95% CI of their median."""
    import statistics

    ratios = [(b / base_size) / (c / size) for b, c in zip(base.seconds, timing.seconds, strict=True)]
    low, high = median_confidence_interval(ratios)
    return Outcome(
        candidate,
        status="measured",
        speedup=statistics.median(ratios),
        ci_low=low,
        ci_high=high,
        samples_per_s=size / statistics.median(timing.seconds),
        baseline_samples_per_s=base_size / statistics.median(base.seconds),
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"tune.device={name!r} but CUDA is not available on this machine; use cpu or auto")
    return device


def _take(loader: Any, count: int) -> list[Any]:
    """The first ``count`` batches, as the loader gives them (any structure)."""
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= count:
            break
    return batches


def _autocast(precision: str | None, device: torch.device) -> Callable[[], Any]:
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtypes[precision])


def _has_batch_size(datamodule: Any) -> bool:
    """Whether a batch-size setting (``data.batch_size``) reaches this datamodule."""
    hparams = getattr(datamodule, "hparams", {}) or {}
    return hasattr(datamodule, "batch_size") or "batch_size" in hparams
