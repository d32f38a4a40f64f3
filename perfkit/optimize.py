"""Optimize a trained checkpoint and compare it with the original on the held-out test set.

    python -m perfkit.optimize ckpt_path=RUN/checkpoints/best.ckpt quantize=int8_dynamic \\
        prune.amount=0.5 prune.method=channels compile=true

Writes into its run directory: ``optimized.pt`` (the final model, ``torch.load(..., weights_only=False)``),
``comparison.json`` (environment, config, one row per stage, transform reports) and ``comparison.md``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit.checkpoint import save_atomically
from perfkit.cli import command, run_program
from perfkit.config import ConfigError, check_required, typed_root
from perfkit.errors import first_line
from perfkit.schemas import PostTraining

log = logging.getLogger(__name__)


def optimize(cfg: DictConfig) -> dict[str, Any]:
    """Apply the requested transforms stage by stage to the module's network; score each stage with
    the module's own validation/test steps (its own metrics), and time, size and compare it."""
    import torch

    from perfkit.network import get_network, network_path
    from perfkit.optim import reports
    from perfkit.optim.exporting import FILE_NAMES
    from perfkit.run import RunDirectory, write_json
    from perfkit.system import environment
    from perfkit.train import build

    check_required(cfg)
    checkpoint, run_cfg = load_run(cfg.ckpt_path)
    device = _check_options(cfg)
    output_dir = Path(cfg.paths.output_dir)
    RunDirectory(output_dir, precious=("comparison.json", "optimized.pt", "serve.json", *FILE_NAMES.values()))

    torch.manual_seed(cfg.seed)
    datamodule, model = build(run_cfg)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(
            f"ckpt_path: the weights do not fit the run's model config (a run trained with channel pruning "
            f"has a smaller architecture than its config describes): {first_line(error)}"
        ) from None
    path = network_path(model)
    log.info("transforms apply to %s", f"{type(model).__name__}.{path}" if path else type(model).__name__)
    datamodule.setup("fit")
    evaluator = Evaluator(model, path, datamodule, device, str(run_cfg.get("monitor", "")))
    stages = _transform_stages(cfg, model, path, evaluator, run_cfg, device)
    final = get_network(stages[-1][1], path)
    exports = _export_stages(stages, evaluator, cfg, output_dir)
    rows, call = _measure_stages(stages, evaluator, cfg, device)
    serve = _serve(stages, rows, evaluator.path, call, cfg, output_dir) if cfg.serve.enabled else None

    saved = _save_final(final, output_dir / "optimized.pt")
    result = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "module": type(model).__name__,
        "network": path,  # "" for the module itself
        "device": str(device),
        "batch_size": call.batch_size,
        "threads": cfg.benchmark.threads or torch.get_num_threads(),
        "rounds": cfg.benchmark.rounds,
        "score": evaluator.score_description(),
        "rows": rows,
        "optimized_pt": saved,
        "exports": exports,
        "serve": serve,
        "reports": [r.to_dict() for r in reports(final)],
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": environment(),
    }
    write_json(output_dir / "comparison.json", result)
    table = comparison_markdown(result)
    (output_dir / "comparison.md").write_text(table + "\n")
    print(table)
    log.info("optimized model and comparison in %s", output_dir)
    return result


class Evaluator:
    """Scores a stage with the module's own ``validation_step``/``test_step`` in a Lightning Trainer,
    and keeps the inputs of the network's first call (what the stages are timed on)."""

    def __init__(self, model: Any, path: str, datamodule: Any, device: Any, monitor: str) -> None:
        from perfkit.monitoring import missing_stage

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

        from perfkit.network import CaptureFirstCall, get_network

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


def _check_options(cfg: DictConfig) -> Any:
    """The measuring device, once the options are known to be valid together."""
    import torch

    options = typed_root(cfg, PostTraining)
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda is not available on this machine; use device=cpu")
    if options.quantize and device.type != "cpu":
        raise ConfigError(f"quantize={options.quantize} runs on the CPU only; use device=cpu")
    if options.serve.enabled and device.type != "cpu":
        raise ConfigError("serve.enabled=true measures serving on the CPU; use device=cpu")
    return device


def _transform_stages(
    cfg: DictConfig, model: Any, path: str, evaluator: Evaluator, run_cfg: DictConfig, device: Any
) -> list[tuple[str, Any]]:
    """(label, module) after each transform of its network, in order: original, prune (+ fine-tune),
    quantize, compile. The original is scored first, which also records the network's inputs."""
    from perfkit.network import get_network, with_network
    from perfkit.optim import compile as compile_model
    from perfkit.optim import prune, quantize, reports

    model = model.eval()
    stages: list[tuple[str, Any]] = [("original", model)]
    evaluator.original_metrics = evaluator.metrics(model)
    example = _example_call(evaluator, model)
    current = get_network(model, path)
    if cfg.prune.amount:
        inputs = example.resized(2).args if cfg.prune.method == "channels" else None
        if cfg.prune.method == "channels" and example.kwargs:
            raise ConfigError("prune.method=channels traces the network with positional inputs only")
        current = prune(current, amount=cfg.prune.amount, method=cfg.prune.method, example_inputs=inputs)
        label = f"prune {cfg.prune.method} {cfg.prune.amount}"
        if cfg.prune.finetune_epochs:
            current = finetune(current, model, path, evaluator.datamodule, cfg.prune.finetune_epochs, device)
            label += f" + fine-tune {cfg.prune.finetune_epochs} ep"
        stages.append((label, with_network(model, path, current.eval())))
    if cfg.quantize:
        # backend=auto times torch.ao and torchao on the network's inputs, as the next stage runs it
        inputs = None if example.kwargs else example.resized(cfg.benchmark.batch_size).to("cpu").args
        # static int8 sets its activation ranges on training batches, never on held-out ones
        calibration = (
            _calibration_batches(evaluator, model, example) if cfg.quantize == "int8_static" else None
        )
        current = quantize(
            current,
            scheme=cfg.quantize,
            backend=cfg.quantize_backend,
            example_inputs=inputs,
            compiled=cfg.compile,
            calibration=calibration,
        )
        backend = reports(current)[-1].transform.rpartition("backend=")[2].rstrip(")")
        name = f"{cfg.quantize} ({backend})"
        label = f"{stages[-1][0]} + {name}" if len(stages) > 1 else name
        stages.append((label, with_network(model, path, current)))
    if cfg.compile:
        current = compile_model(current, mode=cfg.compile_mode)
        label = f"{stages[-1][0]} + compile" if len(stages) > 1 else "compile"
        stages.append((label, with_network(model, path, current.eval())))
    if len(stages) == 1 and not cfg.export:
        raise ConfigError(
            "nothing to do: set prune.amount, quantize=int8_dynamic, compile=true and/or export=[onnx,aoti]"
        )
    return stages


def _example_call(evaluator: Evaluator, model: Any) -> Any:
    """What the network was called with while the original was scored, else from the data."""
    from perfkit.network import call_from_batch

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


def _export_stages(
    stages: list[tuple[str, Any]], evaluator: Evaluator, cfg: DictConfig, output_dir: Path
) -> list[dict[str, Any]]:
    """Export the last stage's network in each of ``cfg.export``'s formats into the run directory,
    and add each artifact that passed its check as a stage of its own (scored and timed like the
    others). A format that fails is one line in the log and in the returned records; the rest still run."""
    from perfkit.network import get_network
    from perfkit.optim import CompiledModule
    from perfkit.optim.exporting import FILE_NAMES, ExportError, export_checked, load
    from perfkit.optim.report import count_parameters

    if not cfg.export:
        return []
    label, module = stages[-1]
    if cfg.quantize:  # torch.export takes float networks; the int8 formats quantize with ONNX Runtime
        label, module = stages[1] if cfg.prune.amount else stages[0]
        log.info("export: from %s, the float network before quantize=%s", label, cfg.quantize)
    network = get_network(module, evaluator.path)
    if isinstance(network, CompiledModule):  # exporting compiles ahead of time: export the eager network
        network = network.module
    call = _example_call(evaluator, stages[0][1]).resized(cfg.benchmark.batch_size).to("cpu")
    records: list[dict[str, Any]] = []
    for format in cfg.export:
        record: dict[str, Any] = {"format": format, "of": label}
        try:
            if call.kwargs:
                raise ExportError(
                    "the network is called with keyword arguments; export takes positional inputs"
                )
            artifact, checked = export_checked(
                network.cpu(),
                call.args,
                format=format,
                path=output_dir / FILE_NAMES[format],
                calibration=_calibration_batches(evaluator, stages[0][1], call)
                if "static" in format
                else None,
            )
        except ExportError as error:
            log.warning("export %s: %s", format, error)
            records.append({**record, "error": str(error)})
            continue
        loaded = load(artifact, device=cfg.device, threads=cfg.benchmark.threads)
        loaded.source_parameters = count_parameters(network)
        stages.append(
            (
                format if label == "original" else f"{label} -> {format}",
                _with_artifact(stages[0][1], evaluator.path, loaded),
            )
        )
        records.append({**record, **checked.to_dict()})
        log.info("export %s: %s (%.1f MB, checked against eager)", format, artifact, checked.size_bytes / 1e6)
    return records


def _serve(
    stages: list[tuple[str, Any]],
    rows: list[dict[str, Any]],
    path: str,
    call: Any,
    cfg: DictConfig,
    output_dir: Path,
) -> dict[str, Any]:
    """Every stage as a serving candidate (perfkit.serving): cold start in a fresh process, batch-1
    latency percentiles, throughput, peak memory, size and the test accuracy already measured."""
    from perfkit.network import get_network
    from perfkit.optim import CompiledModule
    from perfkit.serving import Candidate, serve_benchmark

    if call.kwargs:  # said, not raised: the comparison measured so far is still written
        reason = "the network is called with keyword arguments; serving takes positional inputs"
        log.warning("serve.enabled: not measured: %s", reason)
        return {"skipped": reason}
    candidates = []
    for (name, module), row in zip(stages, rows, strict=True):
        network = get_network(module, path).cpu().eval()
        loaded = _artifact(network)
        kind = "torch_compile" if isinstance(network, CompiledModule) else "torch"
        if loaded is not None:
            kind, network = ("aoti" if loaded.path.endswith(".pt2") else "onnx"), loaded
        candidates.append(Candidate(name, network, kind, loaded and loaded.path, row.get("test_acc")))
    options = cfg.serve
    report = serve_benchmark(
        candidates,
        tuple(a.cpu() for a in call.args),
        batch_size=options.batch_size,
        latency_calls=options.latency_calls,
        rounds=options.rounds,
        cold_starts=options.cold_starts,
        concurrency=options.concurrency,
        threads=cfg.benchmark.threads or 1,
        work_dir=output_dir,
        progress=lambda step: log.info("serve: %s", step),
    )
    report.save(output_dir)
    print(report.to_markdown())
    return report.to_dict()


def _save_final(final: Any, path: Path) -> str:
    """``optimized.pt``, or why it could not be written (a torch.export graph, e.g. int8_static, does
    not pickle: its deployable forms are the export formats)."""
    import pickle

    try:
        save_atomically(final, path)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        reason = f"not written: the final model cannot be pickled ({first_line(error, limit=120)}); use export=[...]"
        log.warning("optimized.pt %s", reason)
        return reason
    return path.name


def _with_artifact(module: Any, path: str, artifact: Any) -> Any:
    """``module`` whose network is the loaded ``artifact``. When the network is the module itself
    (path ""), a copy whose ``forward`` is the artifact's, so its own steps (``self(x)``) score the
    artifact; the artifact rides along as ``perfkit_artifact`` for its size and serving."""
    from perfkit.network import with_network

    if path:
        return with_network(module, path, artifact)
    scored = copy.deepcopy(module)
    scored.perfkit_artifact = artifact
    scored.forward = artifact.forward
    return scored


def _artifact(network: Any) -> Any:
    """The loaded artifact a stage's network is or calls, else None."""
    from perfkit.optim.exporting import LoadedArtifact

    return network if isinstance(network, LoadedArtifact) else getattr(network, "perfkit_artifact", None)


def _described(network: Any, name: str) -> Any:
    """An artifact's own size or its source's parameter count (its weights are not torch's)."""
    return getattr(_artifact(network), name, None)


def _calibration_batches(evaluator: Evaluator, model: Any, call: Any) -> list[tuple[Any, ...]]:
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


def _measure_stages(
    stages: list[tuple[str, Any]], evaluator: Evaluator, cfg: DictConfig, device: Any
) -> tuple[list[dict[str, Any]], Any]:
    """One row per stage: the module's own metrics, output drift, size, and latency timed
    interleaved with the original on the network's recorded inputs."""
    import torch

    from perfkit.measure import output_drift, speedup
    from perfkit.network import get_network
    from perfkit.optim.report import count_parameters, serialized_size

    call = _example_call(evaluator, stages[0][1]).resized(cfg.benchmark.batch_size).to(device)
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
            "parameters": _described(network, "source_parameters") or count_parameters(network),
            "size_bytes": _described(network, "size_bytes") or serialized_size(network),
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


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table, one row per stage: the module's own metrics first."""
    rows = result["rows"]
    names = list(dict.fromkeys(name for row in rows for name in row["metrics"]))
    header = (
        f"{result['module']}{'.' + result['network'] if result['network'] else ''}, {result['device']}, batch {result['batch_size']}, "
        f"{result['threads']} thread(s), {result['rounds']} interleaved rounds; speed-up = median of per-round "
        f"ratios (p10-p90); scored by {result['score']}\n\n"
        f"| variant | {' | '.join(names)}{' | ' if names else ''}output drift | latency median (IQR) | speed-up "
        "| size | size ratio | parameters |\n"
        f"|---|{'---|' * len(names)}---|---|---|---|---|---|"
    )
    lines = [header]
    for row in rows:
        metrics = "".join(f"{row['metrics'][n]:.4f} | " if n in row["metrics"] else "- | " for n in names)
        drift = row["output_drift"]
        shown = f"{drift['max_abs_diff_relative']:.2g}" if "max_abs_diff_relative" in drift else "-"
        if "argmax_agreement" in drift:
            shown += f" ({100 * drift['argmax_agreement']:.1f}% same argmax)"
        lines.append(
            f"| {row['variant']} | {metrics}{shown} "
            f"| {row['latency_ms_median']:.3f} ms ({row['latency_ms_iqr']:.3f}) "
            f"| {row['speedup']:.2f}x ({row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}) "
            f"| {row['size_bytes'] / 1e6:.2f} MB | {row['size_ratio']:.2f}x | {row['parameters']:,} |"
        )
    return "\n".join(lines)


def load_run(ckpt_path: str) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint of a perfkit training run and that run's resolved config."""
    from perfkit.checkpoint import read_checkpoint

    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is not a file: give a checkpoint of a perfkit training run"
        )
    run_config = path.resolve().parent.parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: no config.yaml in its run directory ({run_config.parent}); "
            "perfkit.optimize needs a checkpoint written by perfkit.train"
        )
    return read_checkpoint(path, "ckpt_path"), OmegaConf.load(run_config)  # type: ignore[return-value]


def finetune(network: Any, model: Any, path: str, datamodule: Any, epochs: int, device: Any) -> Any:
    """Train the pruned network a few epochs inside the module (its own training_step and
    configure_optimizers), to recover accuracy."""
    import lightning as L

    from perfkit.network import get_network, with_network

    tuned: Any = copy.deepcopy(with_network(model, path, network)).train()
    if hasattr(tuned, "scheduler_factory"):
        tuned.scheduler_factory = None  # perfkit's classifiers: the run's schedule spans the whole run
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=device.type,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
    )
    trainer.fit(tuned, datamodule=datamodule)
    return get_network(tuned, path)


def _time_stages(stages: list[tuple[str, Any]], call: Any, bench: DictConfig, device: Any) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from perfkit.measure import time_interleaved

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


main = command("perfkit.optimize", "optimize", optimize, user_errors=(ValueError,))


if __name__ == "__main__":
    run_program(main)
