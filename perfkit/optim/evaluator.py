"""Scoring and timing a stage with the module's own validation/test steps; calibration batches from
the training data."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from perfkit.config import ConfigError
from perfkit.measure import output_drift, speedup, time_interleaved
from perfkit.monitoring import missing_stage
from perfkit.network import CaptureFirstCall, call_from_batch, get_network
from perfkit.optim.artifacts import LoadedArtifact
from perfkit.optim.report import count_parameters, serialized_size

log = logging.getLogger(__name__)


class Evaluator:
    """Scores a stage with the module's own ``validation_step``/``test_step`` in a Lightning Trainer,
    and keeps the inputs of the network's first call (what the stages are timed on)."""

    def __init__(self, model: Any, path: str, datamodule: Any, device: Any, monitor: str) -> None:

        self.model, self.path, self.datamodule, self.device = model, path, datamodule, device
        self.monitor = monitor
        self.skipped = {stage: missing_stage(stage, model, datamodule) for stage in ("val", "test")}
        self.call: Any = None
        self.original_metrics: dict[str, float] = {}

    def score_description(self) -> str:
        stages = [s for s, why in self.skipped.items() if not why]
        if not stages:
            reasons = "; ".join(why for why in self.skipped.values() if why)
            return f"none: {reasons} (only output drift, speed and size are compared)"
        return f"the module's own {' and '.join(stages)} steps; monitored {self.monitor or 'nothing'}"

    def metrics(self, stage_module: Any) -> dict[str, float]:
        """Every metric the module logs on the validation and test sets, for this stage."""
        import lightning as L

        capture = CaptureFirstCall(get_network(stage_module, self.path)) if self.call is None else None
        trainer = L.Trainer(
            accelerator=self.device.type,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        values: dict[str, float] = {}
        try:
            for stage, run in (("val", trainer.validate), ("test", trainer.test)):
                if not self.skipped[stage]:
                    out = run(stage_module, datamodule=self.datamodule, verbose=False)
                    values.update({k: float(v) for k, v in (out[0] if out else {}).items()})
        finally:
            if capture is not None:
                capture.remove()
                self.call = capture.call
        return values


def example_call(evaluator: Evaluator, model: Any) -> Any:
    """What the network was called with while the original was scored, else from the data."""

    if evaluator.call is not None:
        return evaluator.call
    datamodule = evaluator.datamodule
    call = call_from_batch(model, next(iter(datamodule.train_dataloader())))
    if call is None:
        raise ConfigError(
            f"perfkit.optimize needs an input for {type(model).__name__}'s network: it has no validation or "
            "test step to watch, no example_input_array, and its batches are not (inputs, ...) tuples"
        )
    return call


def calibration_batches(evaluator: Evaluator, model: Any, call: Any) -> list[tuple[Any, ...]]:
    """The first training batches' inputs (static int8 ranges are set on them, never on held-out
    data) where a batch's inputs look like the network's (same shape past the batch, same dtype);
    else the recorded call alone."""
    import torch

    def fits(inputs: tuple[Any, ...]) -> bool:
        return len(inputs) == len(call.args) and all(
            isinstance(t, torch.Tensor) and t.shape[1:] == a.shape[1:] and t.dtype == a.dtype
            for t, a in zip(inputs, call.args, strict=False)
        )

    batches = []
    for batch in itertools.islice(evaluator.datamodule.train_dataloader(), 16):
        inputs = (batch[0],) if isinstance(batch, list | tuple) and batch else (batch,)
        if not fits(inputs):
            break
        batches.append(tuple(t.cpu() for t in inputs))
    if not batches:
        log.info(
            "export: the training batches are not the network's inputs: static int8 calibrated on one recorded call"
        )
    return batches or [call.args]


def measure_stages(
    stages: list[tuple[str, Any]], evaluator: Evaluator, cfg: DictConfig, device: Any
) -> tuple[list[dict[str, Any]], Any]:
    """One row per stage: the module's own metrics, output drift, size, and latency timed
    interleaved with the original on the network's recorded inputs."""
    import torch

    call = example_call(evaluator, stages[0][1]).resized(cfg.benchmark.batch_size).to(device)
    path = evaluator.path
    with torch.inference_mode():
        reference = call.run(get_network(stages[0][1], path).to(device))
    # argmax agreement means something only for class scores
    classifier = any("acc" in name for name in evaluator.original_metrics)
    rows: list[dict[str, Any]] = []
    for index, (name, module) in enumerate(stages):
        if device.type == "cpu" or not cfg.quantize:
            module.to(device)
        metrics = evaluator.original_metrics if index == 0 else evaluator.metrics(module)
        network = get_network(module, path)
        with torch.inference_mode():
            drift = output_drift(reference, call.run(network), classes=classifier)
        row = {
            "variant": name,
            "metrics": metrics,
            "output_drift": drift,
            "parameters": described(network, "source_parameters") or count_parameters(network),
            "size_bytes": described(network, "size_bytes") or serialized_size(network),
        }
        accuracy = _accuracy(metrics)
        if accuracy is not None:
            row["test_acc"] = accuracy
        rows.append(row)
        log.info(
            "%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no held-out metric"
        )
        _warn_collapse(name, drift)
    timings = _time_stages([(n, get_network(m, path)) for n, m in stages], call, cfg.benchmark, device)
    baseline = timings["original"]
    for row in rows:
        timing = timings[str(row["variant"])]
        ratio = speedup(baseline, timing)
        row.update(
            latency_ms_median=timing.median_ms,
            latency_ms_iqr=timing.iqr_ms,
            latency_ms_p90=timing.p90_ms,
            speedup=ratio.median,
            speedup_p10=ratio.low,
            speedup_p90=ratio.high,
            size_ratio=rows[0]["size_bytes"] / row["size_bytes"],
        )
        if "test_acc" in row and "test_acc" in rows[0]:
            row["acc_drop_points"] = 100 * (rows[0]["test_acc"] - row["test_acc"])
    return rows, call


def _accuracy(metrics: dict[str, float]) -> float | None:
    """The test accuracy a module logs (``test/acc``, ``test_acc``, ``test/accuracy``...), if any."""
    for name, value in metrics.items():
        stage, _, metric = name.replace("/", "_").partition("_")
        if stage == "test" and metric in ("acc", "accuracy"):
            return value
    return None


def _warn_collapse(name: str, drift: dict[str, float]) -> None:
    if drift.get("non_finite") or drift.get("max_abs_diff_relative", 0.0) > 0.5:
        log.warning(
            "%s: its outputs are far from the original's on the same inputs (%s): check before shipping it",
            name,
            drift,
        )


def _time_stages(stages: list[tuple[str, Any]], call: Any, bench: DictConfig, device: Any) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    previous_threads = torch.get_num_threads()
    if bench.threads:
        torch.set_num_threads(bench.threads)

    def forward(net: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return call.run(net)

        return run

    try:
        with tqdm(total=bench.rounds, desc="timing (interleaved rounds)", disable=None) as bar:
            return time_interleaved(
                {name: forward(net) for name, net in stages},
                rounds=bench.rounds,
                warmup=bench.warmup,
                device=device,
                progress=lambda done, _: bar.update(1),
            )
    finally:
        torch.set_num_threads(previous_threads)


def described(network: Any, name: str) -> Any:
    """An artifact's own size or its source's parameter count (its weights are not torch's)."""
    return getattr(_artifact(network), name, None)


def _artifact(network: Any) -> Any:
    """The loaded artifact a stage's network is or calls, else None."""

    return network if isinstance(network, LoadedArtifact) else getattr(network, "perfkit_artifact", None)
