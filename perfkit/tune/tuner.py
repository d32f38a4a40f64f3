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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from perfkit.measure import Timing, median_confidence_interval, time_interleaved
from perfkit.schemas import Tune as TuneSettings
from perfkit.tune.selection import (
    ACCEPTED,
    REJECTED,
    SKIPPED,
    Budget,
    Candidate,
    Outcome,
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
    ) -> None:
        self.settings = settings
        self.device = _device(settings.device)
        self.module = module
        self.datamodule = datamodule
        self.progress = progress
        self.budget = Budget(settings.budget_s, reserve_s=0.05 * settings.budget_s)
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.train_batches = _take(datamodule.train_dataloader(), 8)
        self.val_batches = _take(datamodule.val_dataloader(), 16)
        if not self.train_batches or not self.val_batches:
            raise ValueError("the datamodule gave no training or no validation batches")
        self.batch_size = len(self.train_batches[0][0])
        self.initial_state = copy.deepcopy(module.state_dict())
        self._trained: dict[str, Any] = {}  # the short runs, by training setting
        self._curves: dict[str, list[tuple[int, float]]] = {}  # accuracy while training, by setting
        self._pool: tuple[torch.Tensor, ...] | None = None

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
            factor = 2
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
        optimizer = _optimizer(copy.deepcopy(self.module))
        base_lr = float(optimizer.param_groups[0]["lr"])
        linear = type(optimizer).__name__ in ("SGD",)
        lr = base_lr * (factor if linear else factor**0.5)
        settings: dict[str, Any] = {
            "data.batch_size": self.batch_size * factor,
            "optimizer.lr": float(f"{lr:.4g}"),
        }
        rule = f"lr {settings['optimizer.lr']:g}, {'linear' if linear else 'square-root'} scaling"
        if hasattr(self.module, "warmup_steps"):
            settings["model.warmup_steps"] = max(1, self.settings.accuracy_steps // 10)
            rule += f", {settings['model.warmup_steps']}-step warm-up"
        return settings, rule

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> TuneResult:
        from perfkit.run import environment

        outcomes: list[Outcome] = []
        if "train" in self.settings.modes:
            outcomes.append(self._num_workers())
        outcomes += run_within_budget(
            self.candidates(),
            self._measure,
            self.budget,
            max_accuracy_drop=self.settings.max_accuracy_drop,
            on_done=self.progress,
        )
        best = pick(outcomes)
        chosen: dict[str, dict[str, Any]] = {mode: {} for mode in self.settings.modes}
        for (mode, _axis), outcome in best.items():
            chosen[mode].update(outcome.candidate.settings)
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

    def _training_step(self, keys: dict[str, Any]) -> tuple[Callable[[], None], int]:
        """One optimizer step of a fresh copy of the module under ``keys``; returns it and its batch size."""
        module = self._fresh_module(keys)
        optimizer = _optimizer(module)
        batch = _to_device(self._batch(keys.get("data.batch_size", self.batch_size)), self.device)
        if keys.get("channels_last"):
            module = module.to(memory_format=torch.channels_last)
            batch = (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
        autocast = _autocast(keys.get("precision"), self.device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = _loss(module.training_step(batch, 0))
            loss.backward()
            optimizer.step()

        return step, len(batch[0])

    def _fresh_module(self, keys: dict[str, Any]) -> Any:
        module = copy.deepcopy(self.module)
        module.load_state_dict(self.initial_state)
        module.to(self.device).train()
        if keys.get("optimize.compile"):
            module.forward = torch.compile(module.forward, mode=keys.get("optimize.compile_mode", "default"))
        return module

    def _measure_training(self, candidate: Candidate) -> Outcome:
        base_step, base_size = self._training_step({})
        step, size = self._training_step(candidate.settings)
        with _quiet():
            timings = time_interleaved(
                {"baseline": base_step, "candidate": step},
                rounds=self.settings.rounds,
                warmup=self.settings.warmup,
                device=self.device,
            )
        outcome = _paired(candidate, timings["baseline"], base_size, timings["candidate"], size)
        if candidate.changes_numerics:
            self._time_to_accuracy(outcome, timings["baseline"], timings["candidate"])
        return outcome

    def _time_to_accuracy(self, outcome: Outcome, base: Timing, timing: Timing) -> None:
        """Judge a setting that changes the numerics by the time it takes to reach the baseline's
        held-out accuracy from the same initial weights and samples (MLPerf Training's rule), not by
        samples/s: a larger batch takes fewer, and different, optimizer steps."""
        import statistics

        keys = outcome.candidate.settings
        base_curve = self._curve({}, self.settings.accuracy_steps, None)
        baseline_accuracy = base_curve[-1][1]
        target = baseline_accuracy - self.settings.max_accuracy_drop / 100
        base_steps = next(step for step, accuracy in base_curve if accuracy >= target)
        size = int(keys.get("data.batch_size", self.batch_size))
        # up to twice the baseline's samples: a larger batch may need more epochs, not unlimited ones
        cap = max(1, math.ceil(2 * self.settings.accuracy_steps * self.batch_size / size))
        curve = self._curve(keys, cap, target)
        reached = next((step for step, accuracy in curve if accuracy >= target), None)
        outcome.baseline_accuracy = baseline_accuracy
        outcome.accuracy = max(accuracy for _, accuracy in curve)
        outcome.baseline_time_to_accuracy_s = statistics.median(base.seconds) * base_steps
        if reached is None:
            outcome.status = REJECTED
            outcome.speedup = outcome.ci_low = outcome.ci_high = None
            outcome.reason = (
                f"never reached the baseline's held-out accuracy {target:.3f} within {cap} steps "
                f"(twice its samples; best {outcome.accuracy:.3f})"
            )
            return
        outcome.accuracy = next(accuracy for step, accuracy in curve if step == reached)
        outcome.time_to_accuracy_s = statistics.median(timing.seconds) * reached
        ratios = [(b * base_steps) / (c * reached) for b, c in zip(base.seconds, timing.seconds, strict=True)]
        outcome.speedup = statistics.median(ratios)
        outcome.ci_low, outcome.ci_high = median_confidence_interval(ratios)
        outcome.steps_to_accuracy = (base_steps, reached)

    def _curve(self, keys: dict[str, Any], steps: int, target: float | None) -> list[tuple[int, float]]:
        """Held-out accuracy every few optimizer steps while training a fresh copy under ``keys`` (the
        learning rate and warm-up they set included), stopping once ``target`` is reached."""
        cache_key = repr(sorted(keys.items()))
        if cache_key in self._curves:
            return self._curves[cache_key]
        module = self._fresh_module({k: v for k, v in keys.items() if k != "optimize.compile"})
        optimizer = _optimizer(module)
        lr = float(keys.get("optimizer.lr", optimizer.param_groups[0]["lr"]))
        warmup = int(keys.get("model.warmup_steps", 0))
        size = int(keys.get("data.batch_size", self.batch_size))
        autocast = _autocast(keys.get("precision"), self.device)
        every = max(1, steps // 12)
        curve: list[tuple[int, float]] = []
        with _quiet():
            for step, batch in enumerate(self._stream(size, steps), start=1):
                for group in optimizer.param_groups:
                    group["lr"] = lr * min(1.0, step / (warmup + 1)) if warmup else lr
                module.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = _loss(module.training_step(_to_device(batch, self.device), step))
                loss.backward()
                optimizer.step()
                if step % every == 0 or step == steps:
                    curve.append((step, self._accuracy(module, keys.get("precision"))))
                    if target is not None and curve[-1][1] >= target:
                        break
        self._curves[cache_key] = curve
        return curve

    def _stream(self, size: int, steps: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """``steps`` batches of ``size`` drawn in one fixed order from a pool of real training samples,
        so every batch size sees the same samples in the same order."""
        pool = self._sample_pool()
        count = len(pool[0])
        for step in range(steps):
            index = torch.arange(step * size, (step + 1) * size) % count
            yield tuple(t[index] for t in pool)

    def _sample_pool(self) -> tuple[torch.Tensor, ...]:
        """Training samples for the accuracy runs: twice the baseline run's, at most 256 MB."""
        if self._pool is None:
            wanted = 2 * self.settings.accuracy_steps * self.batch_size
            first = self.train_batches[0][0]
            limit = max(len(first), (256 << 20) // max(1, first[0].numel() * first.element_size()))
            batches: list[tuple[torch.Tensor, ...]] = []
            while sum(len(b[0]) for b in batches) < min(wanted, limit):
                fresh = _take(self.datamodule.train_dataloader(), 10_000)
                batches += [tuple(b[:2]) for b in fresh]
                if not fresh or len(batches) > 100_000:
                    break
            self._pool = tuple(
                torch.cat(list(column))[: min(wanted, limit)] for column in zip(*batches, strict=True)
            )
        return self._pool

    def _short_run(self, keys: dict[str, Any]) -> float:
        """Held-out accuracy after ``accuracy_steps`` optimizer steps from the initial weights."""
        cache_key = repr(sorted(keys.items()))
        if cache_key not in self._trained:
            module = self._fresh_module({k: v for k, v in keys.items() if k != "optimize.compile"})
            self._train(module, self.settings.accuracy_steps, keys.get("precision"))
            self._trained[cache_key] = module
        return self._accuracy(self._trained[cache_key])

    def _train(self, module: Any, steps: int, precision: str | None) -> None:
        optimizer = _optimizer(module)
        autocast = _autocast(precision, self.device)
        module.train()
        with _quiet():
            for index in range(steps):
                batch = _to_device(self.train_batches[index % len(self.train_batches)], self.device)
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = _loss(module.training_step(batch, index))
                loss.backward()
                optimizer.step()

    def _accuracy(self, model: nn.Module, precision: str | None = None) -> float:
        from perfkit.measure import accuracy

        autocast = _autocast(precision, self.device)
        with autocast(), _quiet():
            return accuracy(model, [(x, y) for x, y, *_ in self.val_batches], self.device)

    # -- inference ------------------------------------------------------------------------------

    def _trained_model(self) -> Any:
        self._short_run({})
        return self._trained[repr([])]

    def _inference_model(self, keys: dict[str, Any]) -> nn.Module:
        from perfkit.optim import compile, prune, quantize

        model: nn.Module = copy.deepcopy(self._trained_model()).eval()
        if "prune_channels" in keys:
            example = self._batch(1)[0].to(self.device)
            with _quiet():
                model = prune(model, amount=keys["prune_channels"], method="channels", example_inputs=example)
            self._train(model, self.settings.accuracy_steps // 2, None)  # a short fine-tune
            model.eval()
        if "quantize" in keys:
            with _quiet():
                model = quantize(model.cpu(), backend=keys["quantize"])
        if "compile_mode" in keys:
            model = compile(model, mode=keys["compile_mode"])
        return model

    def _measure_inference(self, candidate: Candidate) -> Outcome:
        keys = candidate.settings
        baseline = copy.deepcopy(self._trained_model()).eval()
        model = self._inference_model(keys)
        precision = "bf16-mixed" if keys.get("precision") == "bf16" else None
        base_inputs = self._batch(self.batch_size)[0].to(self.device)
        inputs = self._batch(keys.get("batch_size", self.batch_size))[0].to(self.device)

        def forward(net: nn.Module, x: torch.Tensor, autocast: Callable[[], Any]) -> Callable[[], None]:
            def call() -> None:
                with torch.inference_mode(), autocast():
                    net(x)

            return call

        with _quiet():
            timings = time_interleaved(
                {
                    "baseline": forward(baseline, base_inputs, contextlib.nullcontext),
                    "candidate": forward(model, inputs, _autocast(precision, self.device)),
                },
                rounds=self.settings.rounds,
                warmup=self.settings.warmup,
                device=self.device,
            )
        outcome = _paired(candidate, timings["baseline"], len(base_inputs), timings["candidate"], len(inputs))
        if candidate.changes_numerics:
            # a pruned model is fine-tuned: compare it with the baseline trained the same extra steps
            reference = self._finetuned_baseline() if "prune_channels" in keys else baseline
            outcome.baseline_accuracy = self._accuracy(reference)
            outcome.accuracy = self._accuracy(model, precision)
        return outcome

    def _finetuned_baseline(self) -> nn.Module:
        if "finetuned" not in self._trained:
            model = copy.deepcopy(self._trained_model())
            self._train(model, self.settings.accuracy_steps // 2, None)
            self._trained["finetuned"] = model.eval()
        return self._trained["finetuned"]

    def _batch(self, size: int) -> tuple[torch.Tensor, ...]:
        """``size`` real training samples (batches concatenated and repeated as needed)."""
        columns = list(zip(*[b[:2] for b in self.train_batches], strict=True))
        tensors = [torch.cat(list(column)) for column in columns]
        repeats = -(-size // len(tensors[0]))
        return tuple(t.repeat(repeats, *[1] * (t.dim() - 1))[:size] for t in tensors)


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
    batches = []
    for batch in loader:
        batches.append(tuple(batch) if isinstance(batch, list | tuple) else (batch,))
        if len(batches) >= count:
            break
    return batches


def _to_device(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)


def _optimizer(module: Any) -> torch.optim.Optimizer:
    configured = module.configure_optimizers()
    if isinstance(configured, dict):
        configured = configured["optimizer"]
    if isinstance(configured, list | tuple):
        configured = configured[0]
        if isinstance(configured, list | tuple):
            configured = configured[0]
    if not isinstance(configured, torch.optim.Optimizer):
        return torch.optim.SGD(module.parameters(), lr=1e-3)
    return configured


def _loss(output: Any) -> torch.Tensor:
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError("training_step must return the loss (a tensor, or a dict with 'loss')")
    return loss


def _autocast(precision: str | None, device: torch.device) -> Callable[[], Any]:
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtypes[precision])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """``self.log`` outside a Trainer, compile and quantization notices: expected, not actionable here."""
    logger = logging.getLogger("lightning.pytorch.core.module")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
