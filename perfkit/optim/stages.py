"""The stages of ``perfkit.optimize``: transforms applied in order, the float stage exported, the
artifacts served, the final network saved."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from perfkit.checkpoint import save_atomically
from perfkit.config import ConfigError
from perfkit.errors import first_line
from perfkit.network import get_network, with_network
from perfkit.optim import CompiledModule, prune, quantize, reports
from perfkit.optim import compile as compile_model
from perfkit.optim.evaluator import Evaluator, _artifact, calibration_batches, example_call
from perfkit.optim.exporting import FILE_NAMES, ExportError, export_checked, load
from perfkit.optim.report import count_parameters
from perfkit.optim.runs import finetune
from perfkit.serving import Candidate, serve_benchmark

log = logging.getLogger(__name__)


def transform_stages(
    cfg: DictConfig, model: Any, path: str, evaluator: Evaluator, run_cfg: DictConfig, device: Any
) -> list[tuple[str, Any]]:
    """(label, module) after each transform of its network, in order: original, prune (+ fine-tune),
    quantize, compile. The original is scored first, which also records the network's inputs."""

    model = model.eval()
    stages: list[tuple[str, Any]] = [("original", model)]
    evaluator.original_metrics = evaluator.metrics(model)
    example = example_call(evaluator, model)
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
            calibration_batches(evaluator, model, example) if cfg.quantize == "int8_static" else None
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


def export_stages(
    stages: list[tuple[str, Any]], evaluator: Evaluator, cfg: DictConfig, output_dir: Path
) -> list[dict[str, Any]]:
    """Export the last stage's network in each of ``cfg.export``'s formats into the run directory,
    and add each artifact that passed its check as a stage of its own (scored and timed like the
    others). A format that fails is one line in the log and in the returned records; the rest still run."""

    if not cfg.export:
        return []
    label, module = stages[-1]
    if cfg.quantize:  # torch.export takes float networks; the int8 formats quantize with ONNX Runtime
        label, module = stages[1] if cfg.prune.amount else stages[0]
        log.info("export: from %s, the float network before quantize=%s", label, cfg.quantize)
    network = get_network(module, evaluator.path)
    if isinstance(network, CompiledModule):  # exporting compiles ahead of time: export the eager network
        network = network.module
    call = example_call(evaluator, stages[0][1]).resized(cfg.benchmark.batch_size).to("cpu")
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
                calibration=calibration_batches(evaluator, stages[0][1], call)
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


def serve_stages(
    stages: list[tuple[str, Any]],
    rows: list[dict[str, Any]],
    path: str,
    call: Any,
    cfg: DictConfig,
    output_dir: Path,
) -> dict[str, Any]:
    """Every stage as a serving candidate (perfkit.serving): cold start in a fresh process, batch-1
    latency percentiles, throughput, peak memory, size and the test accuracy already measured."""

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


def save_final(final: Any, path: Path) -> str:
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

    if path:
        return with_network(module, path, artifact)
    scored = copy.deepcopy(module)
    scored.perfkit_artifact = artifact
    scored.forward = artifact.forward
    return scored
