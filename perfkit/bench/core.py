"""``perfkit.benchmark``: time variants of a model side by side and report speed, memory, size, accuracy."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from perfkit.bench.mfu import utilization
from perfkit.bench.report import BenchmarkReport, Row
from perfkit.bench.steps import LossFunction, step_function
from perfkit.bench.variants import MODES, check_choices, skip_reason
from perfkit.errors import first_line
from perfkit.measure import (
    NOISY_DISPERSION,
    Timing,
    accuracy,
    dispersion,
    load_snapshot,
    machine_load,
    peak_memory_bytes,
    speedup,
    time_interleaved,
)
from perfkit.optim.report import count_parameters, serialized_size
from perfkit.system import environment

Batch = torch.Tensor | tuple[torch.Tensor, ...]


def benchmark(
    variants: Mapping[str, nn.Module],
    example_inputs: Batch,
    *,
    device: str | torch.device = "cpu",
    mode: str = "inference",
    targets: torch.Tensor | None = None,
    loss_fn: LossFunction = F.cross_entropy,
    eval_data: Iterable[tuple[Any, torch.Tensor]] | None = None,
    baseline: str | None = None,
    rounds: int = 30,
    warmup: int = 3,
    threads: int | None = None,
    model_name: str = "model",
) -> BenchmarkReport:
    """Time each model of ``variants`` on ``example_inputs``, interleaved round by round.

    ``mode="inference"`` times a forward pass under ``torch.inference_mode``; ``mode="train"`` times
    forward, ``loss_fn(output, targets)``, backward and an SGD step on a copy of each model. The
    baseline (default: ``"eager"`` if present, else the first variant) sets the speed-ups. With
    ``eval_data`` (batches of inputs and class labels) each variant's accuracy is measured too.
    Models are moved to ``device``. A variant that cannot run there, or fails, gets a row saying why.
    """
    if not isinstance(variants, Mapping) or not variants:
        raise TypeError(
            "perfkit.benchmark takes a mapping of names to models, e.g. {'eager': model, 'compiled': "
            f"perfkit.compile(model)}}, not {type(variants).__name__}"
        )
    for name, variant in variants.items():
        if not isinstance(variant, nn.Module):
            raise TypeError(
                f"perfkit.benchmark: variant {name!r} is a {type(variant).__name__}, not an nn.Module"
            )
    _warn_if_not_finite(example_inputs)
    report = BenchmarkReport(environment=_environment(), config={"timing": _timing(rounds, warmup, threads)})
    modes = {name: [(m, m.training) for m in variant.modules()] for name, variant in variants.items()}
    started = load_snapshot()
    try:
        report.rows = measure_variants(
            variants,
            example_inputs,
            model_name=model_name,
            device=torch.device(device),
            mode=mode,
            targets=targets,
            loss_fn=loss_fn,
            eval_data=eval_data,
            baseline=baseline,
            rounds=rounds,
            warmup=warmup,
            threads=threads,
        )
    finally:  # inference timing switched the caller's models to eval(): give them back as they were
        for saved in modes.values():
            for module, training in saved:
                module.train(training)
    report.environment["load"] = machine_load(started, load_snapshot())
    _raise_if_none_ran(report.rows)
    _warn_disagreements(report.rows)
    return report


def _warn_disagreements(rows: list[Row]) -> None:
    for row in rows:
        for note in row.notes:
            if note.startswith(DISAGREES):
                warnings.warn(f"perfkit.benchmark: {row.variant}: {note}", stacklevel=3)


DISAGREES = "outputs disagree with"


def _warn_if_not_finite(example_inputs: Batch) -> None:
    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    for index, tensor in enumerate(inputs):
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.isfinite().all():
            bad = int((~tensor.isfinite()).sum())
            warnings.warn(
                f"perfkit.benchmark: example_inputs[{index}] holds {bad} NaN/inf values: timings of "
                "NaN arithmetic, and outputs that cannot be compared",
                stacklevel=3,
            )


def _raise_if_none_ran(rows: list[Row]) -> None:
    # all skipped (no CUDA here) is an answer; all failed means the inputs do not fit the models
    if any(row.status == "failed" for row in rows) and not any(row.ok for row in rows):
        reasons = "; ".join(f"{row.variant}: {row.reason}" for row in rows)
        raise ValueError(f"perfkit.benchmark: no variant ran on these inputs ({reasons})")


def measure_variants(
    variants: Mapping[str, nn.Module],
    example_inputs: Batch,
    *,
    model_name: str,
    device: torch.device,
    mode: str,
    targets: torch.Tensor | None = None,
    loss_fn: LossFunction = F.cross_entropy,
    eval_data: Iterable[tuple[Any, torch.Tensor]] | None = None,
    baseline: str | None = None,
    rounds: int = 30,
    warmup: int = 3,
    threads: int | None = None,
    skipped: Mapping[str, str] | None = None,
    failed: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    optimizer: str = "sgd",
    matmul_rates: dict[str, float] | None = None,
) -> list[Row]:
    """The rows of one (model, device, mode, batch size) cell. ``skipped`` and ``failed`` map the
    variants not to run to the reason (or the error that came up while building them)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    baseline = _check_cell(variants, mode, targets, rounds, warmup, baseline)
    batch_size = len(inputs[0])
    rows = {
        name: Row(model_name, name, device.type, mode, batch_size, baseline=baseline) for name in variants
    }
    for name, model in variants.items():
        if name in (failed or {}):
            rows[name].status, rows[name].reason = "failed", (failed or {})[name]
            continue
        why_not = (skipped or {}).get(name) or skip_reason(name, device, mode, model)
        if why_not:
            rows[name].status, rows[name].reason = "skipped", why_not
    runnable = {name: model for name, model in variants.items() if rows[name].status == "ok"}
    outputs: dict[str, Any] = {}
    steps = _first_calls(
        runnable,
        rows,
        lambda model: step_function(model, inputs, device, mode, targets, loss_fn, optimizer),
        outputs,
    )
    if mode == "inference":
        _note_disagreements(rows, outputs, baseline)

    timings, memory = _time_steps(steps, rounds, warmup, device, threads, progress)
    timings, rounds = _retimed_if_noisy(steps, timings, rounds, device, threads)
    for name, timing in timings.items():
        _fill_row(rows[name], variants[name], timing, rounds, memory[name], timings.get(baseline))
        spread = dispersion(timing)
        rows[name].dispersion, rows[name].noisy = round(spread, 4), spread > NOISY_DISPERSION
        if eval_data is not None and mode == "inference":
            rows[name].test_acc = accuracy(variants[name], eval_data, device)
    rates = utilization(rows, variants, inputs, device, mode)
    if matmul_rates is not None:
        matmul_rates.update(rates)
    return list(rows.values())


def _note_disagreements(rows: dict[str, Row], outputs: dict[str, Any], baseline: str) -> None:
    for name, output in outputs.items():
        disagreement = output_disagreement(outputs[baseline], output) if baseline in outputs else None
        if name != baseline and disagreement:
            rows[name].notes.append(f"{DISAGREES} {baseline}'s: {disagreement}")


def _check_cell(
    variants: Mapping[str, nn.Module],
    mode: str,
    targets: torch.Tensor | None,
    rounds: int,
    warmup: int,
    baseline: str | None,
) -> str:
    """The baseline variant, once the cell's arguments are known to be valid."""
    check_choices("mode", [mode], MODES)
    if not variants:
        raise ValueError("no variants to benchmark: pass a dict of name -> nn.Module")
    if mode == "train" and targets is None:
        raise ValueError("mode='train' needs targets for the loss (e.g. class labels of example_inputs)")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    baseline = baseline or ("eager" if "eager" in variants else next(iter(variants)))
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not a variant; allowed: {', '.join(variants)}")
    return baseline


def _first_calls(
    variants: Mapping[str, nn.Module],
    rows: dict[str, Row],
    make_step: Callable[[nn.Module], Callable[[], Any]],
    outputs: dict[str, Any],
) -> dict[str, Callable[[], Any]]:
    """Each variant's step, called once (compilation, and any error the model raises); a variant that
    fails is recorded in its row and left out, so the others are still measured. ``outputs`` gets
    what each first call returned."""
    steps: dict[str, Callable[[], Any]] = {}
    for name, model in variants.items():
        try:
            step = make_step(model)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outputs[name] = step()
            rows[name].notes += sorted({str(w.message).splitlines()[0] for w in caught if _worth_noting(w)})
            steps[name] = step
        except Exception as error:
            rows[name].status, rows[name].reason = "failed", first_line(error, typed=True)
    return steps


def _retimed_if_noisy(
    steps: dict[str, Callable[[], Any]],
    timings: dict[str, Timing],
    rounds: int,
    device: torch.device,
    threads: int | None,
) -> tuple[dict[str, Timing], int]:
    """A cell with a noisy variant is measured once more, every variant with twice the rounds: a
    passing burst of other work leaves it, a busy machine does not (its rows are then marked noisy)."""
    if not any(dispersion(t) > NOISY_DISPERSION for t in timings.values()):
        return timings, rounds
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return time_interleaved(steps, rounds=2 * rounds, warmup=1, device=device), 2 * rounds
    finally:
        torch.set_num_threads(previous_threads)


def _time_steps(
    steps: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int,
    device: torch.device,
    threads: int | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, Timing], dict[str, int | None]]:
    """Interleaved timings and peak memory of each step, with ``threads`` torch threads if given."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        timings = (
            time_interleaved(steps, rounds=rounds, warmup=warmup, device=device, progress=progress)
            if steps
            else {}
        )
        return timings, {name: peak_memory_bytes(step, device) for name, step in steps.items()}
    finally:
        torch.set_num_threads(previous_threads)


def _fill_row(
    row: Row, model: nn.Module, timing: Timing, rounds: int, peak_memory: int | None, baseline: Timing | None
) -> None:
    if baseline is not None:
        ratio = speedup(baseline, timing)
        row.speedup, row.speedup_p10, row.speedup_p90 = ratio.median, ratio.low, ratio.high
        row.speedup_ci_low, row.speedup_ci_high = ratio.ci_low, ratio.ci_high
    row.rounds = rounds
    row.latency_ms_median = timing.median_ms
    row.latency_ms_p10 = timing.quantile_ms(0.1)
    row.latency_ms_p90 = timing.p90_ms
    row.latency_ms_iqr = timing.iqr_ms
    row.throughput = row.batch_size / (timing.median_ms / 1e3)
    row.peak_memory_bytes = peak_memory
    row.size_bytes = serialized_size(model)
    row.parameters = count_parameters(model)


def output_disagreement(expected: Any, actual: Any) -> str | None:
    """How a variant's output differs from the baseline's beyond what a faster numeric path explains
    (int8, bf16, TF32 move logits by a few percent of their range), or None."""
    if not (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)):
        return None
    if expected.shape != actual.shape:
        return f"shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
    if not expected.is_floating_point():
        return None if torch.equal(expected, actual) else "different values"
    expected, actual = expected.detach().float().cpu(), actual.detach().float().cpu()
    if not expected.isfinite().all() or not actual.isfinite().all():
        return (
            None
            if expected.isfinite().all() == actual.isfinite().all()
            else "NaN/inf where the other is finite"
        )
    scale = float(expected.abs().max()) or 1.0
    error = float((expected - actual).abs().max()) / scale
    if expected.dim() == 2 and expected.shape[1] > 1:
        agree = float((expected.argmax(1) == actual.argmax(1)).float().mean())
        if agree < 0.9:
            return f"argmax agrees on {agree:.0%} of the batch (max |diff| {error:.0%} of the output range)"
        return None
    return f"max |diff| is {error:.0%} of the output range" if error > 0.1 else None


def _worth_noting(warning: warnings.WarningMessage) -> bool:
    # a compile fallback or a quantizer's "nothing to quantize" matters; library deprecations do not
    return not issubclass(warning.category, DeprecationWarning | FutureWarning)


def _timing(rounds: int, warmup: int, threads: int | None) -> dict[str, Any]:
    return {"rounds": rounds, "warmup": warmup, "threads": threads or torch.get_num_threads()}


def _environment() -> dict[str, Any]:

    return environment()
