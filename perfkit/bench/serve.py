"""``bench.modes=[serve]`` (the ``bench=serve`` preset): each model's variants and exported artifacts
as serving candidates (:mod:`perfkit.serving`), on the CPU, with held-out accuracy beside them.

Exports are made from the float network and from the channel-pruned one (when the variants include
pruning); the static int8 format is calibrated on training batches, never on the held-out ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from perfkit.bench.prepared import Prepared
from perfkit.measure import accuracy
from perfkit.optim import CompiledModule
from perfkit.optim.exporting import FILE_NAMES, ExportError, export_checked, load
from perfkit.serving import Candidate, ServeReport, serve_benchmark

if TYPE_CHECKING:
    from perfkit.schemas import Bench

log = logging.getLogger(__name__)
_CALIBRATION_BATCHES = 16


def serve_model(
    prepared: Prepared,
    spec: Bench,
    built: tuple[dict[str, Any], dict[str, str], dict[str, str]],
    output_dir: Path,
    say: Any,
) -> ServeReport:
    """Measure ``prepared``'s serving candidates (``built``: its CPU variants, skip reasons and build
    failures); write serve-<model>/serve.{json,md,png} in ``output_dir``."""
    variants, skipped, failed = built
    batch = spec.batch_sizes[0]
    images, _ = prepared.batch(batch)
    candidates = []
    for name, module in variants.items():
        if name in skipped or name in failed:
            continue
        kind = "torch_compile" if isinstance(module, CompiledModule) else "torch"
        candidates.append(Candidate(name, module, kind, accuracy=_accuracy(module, prepared)))
    sources = {"eager": prepared.net}
    if prepared.channels is not None:
        sources["prune_channels"] = prepared.channels
    artifacts = output_dir / "artifacts" / prepared.name
    export_errors = {}
    for source, network in sources.items():
        for format in spec.exports:
            name = f"{source} -> {format}"
            say(f"{prepared.name}: exporting {name}")
            path = artifacts / f"{source}-{FILE_NAMES[format]}"
            try:
                export_checked(
                    network.cpu().eval(),
                    images,
                    format=format,
                    path=path,
                    calibration=prepared.calibration[:_CALIBRATION_BATCHES],
                )
            except ExportError as error:
                export_errors[name] = str(error)
                log.warning("%s: %s: %s", prepared.name, name, error)
                continue
            module = load(path, threads=spec.threads or torch.get_num_threads())
            candidates.append(
                Candidate(name, module, format.split("_")[0], str(path), _accuracy(module, prepared))
            )
    report = serve_benchmark(
        candidates,
        (images,),
        batch_size=batch,
        latency_calls=spec.serve_latency_calls,
        rounds=spec.rounds,
        concurrency=spec.serve_concurrency,
        threads=spec.threads or torch.get_num_threads(),
        work_dir=output_dir,
        progress=lambda step: say(f"{prepared.name}: {step}"),
    )
    report.settings["model"] = prepared.name
    report.settings["skipped"] = {**skipped, **{k: f"failed: {v}" for k, v in failed.items()}}
    report.settings["export_errors"] = export_errors
    _save(report, output_dir, prepared.name)
    return report


def _accuracy(module: Any, prepared: Prepared) -> float | None:
    if not prepared.trained:
        return None
    return accuracy(module, prepared.test_batches, torch.device("cpu"))


def _save(report: ServeReport, output_dir: Path, model: str) -> None:
    directory = output_dir / f"serve-{model}"
    report.save(directory)
