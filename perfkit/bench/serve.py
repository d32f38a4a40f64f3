"""``bench.modes=[serve]`` (the ``bench=serve`` preset): each model's variants and exported artifacts
as serving candidates (:mod:`perfkit.serving`) on each of ``bench.devices``, with held-out accuracy
beside them.

Exports are made from the float network and from the channel-pruned one (when the variants include
pruning); the static int8 format is calibrated on training batches, never on the held-out ones.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from perfkit.bench.prepared import Prepared
from perfkit.measure import accuracy
from perfkit.optim import CompiledModule, reports
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
    device: torch.device,
) -> tuple[ServeReport, Path]:
    """Measure ``prepared``'s serving candidates on ``device`` (``built``: its variants there, skip
    reasons and build failures); write serve-<model>[-cuda]/serve.{json,md,png} in ``output_dir``."""
    variants, skipped, failed = built
    batch = spec.batch_sizes[0]
    images, _ = prepared.batch(batch)
    images = images.to(device)
    candidates = []
    for name, module in variants.items():
        if name in skipped or name in failed:
            continue
        kind = "torch_compile" if isinstance(module, CompiledModule) else "torch"
        notes = [n for report in reports(module) for n in report.notes if "backend=auto" in n]
        candidates.append(Candidate(name, module, kind, None, _accuracy(module, prepared, device), notes))
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    export_errors = _exported(
        prepared, spec, images, device, output_dir / "artifacts" / f"{prepared.name}{suffix}", candidates, say
    )
    report = serve_benchmark(
        candidates,
        (images,),
        batch_size=batch,
        latency_calls=spec.serve_latency_calls,
        rounds=spec.rounds,
        concurrency=spec.serve_concurrency,
        threads=spec.threads or torch.get_num_threads(),
        device=device,
        work_dir=output_dir,
        progress=lambda step: say(f"{prepared.name}: {step}"),
    )
    report.settings["model"] = prepared.name
    report.settings["skipped"] = {**skipped, **{k: f"failed: {v}" for k, v in failed.items()}}
    report.settings["export_errors"] = export_errors
    directory = output_dir / f"serve-{prepared.name}{suffix}"
    report.save(directory)
    return report, directory


def _exported(
    prepared: Prepared,
    spec: Bench,
    images: torch.Tensor,
    device: torch.device,
    artifacts: Path,
    candidates: list[Candidate],
    say: Any,
) -> dict[str, str]:
    """Export the float and the channel-pruned network in each of ``spec.exports``' formats, adding
    each artifact to ``candidates``; returns the formats that failed, with the reason."""
    sources = {"eager": prepared.net}
    if prepared.channels is not None:
        sources["prune_channels"] = prepared.channels
    errors = {}
    for source, network in sources.items():
        for format in spec.exports:
            name = f"{source} -> {format}"
            say(f"{prepared.name}: exporting {name}")
            path = artifacts / f"{source}-{FILE_NAMES[format]}"
            try:
                export_checked(
                    copy.deepcopy(network).to(device).eval(),
                    images,
                    format=format,
                    path=path,
                    calibration=prepared.calibration[:_CALIBRATION_BATCHES],
                )
            except ExportError as error:
                errors[name] = str(error)
                log.warning("%s: %s: %s", prepared.name, name, error)
                continue
            module = load(path, device=device, threads=spec.threads or torch.get_num_threads())
            score = _accuracy(module, prepared, device)
            candidates.append(Candidate(name, module, format.split("_")[0], str(path), score))
    return errors


def _accuracy(module: Any, prepared: Prepared, device: torch.device) -> float | None:
    if not prepared.trained:
        return None
    return accuracy(module, prepared.test_batches, device)
