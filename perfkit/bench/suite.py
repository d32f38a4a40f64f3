"""The variant matrix of ``python -m perfkit.bench``: model x variant x device x mode x batch size.

For each model: train it briefly on the bundled data (so accuracy means something), prune its
channels once (and fine-tune), then for each device build every variant and time them interleaved,
one (device, mode, batch size) cell at a time. After every cell the report on disk is rewritten,
so an interrupted run keeps its finished rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from perfkit.bench.core import measure_variants
from perfkit.bench.prepared import Prepared
from perfkit.bench.report import BenchmarkReport
from perfkit.bench.serve import serve_model
from perfkit.bench.variants import Settings, build, network, skip_reason
from perfkit.build import build as build_run
from perfkit.config import ConfigError, build_typed, compose_config, config_dir, typed_node
from perfkit.errors import first_line, is_interrupt
from perfkit.fitting import train
from perfkit.measure import load_snapshot, machine_load
from perfkit.optim import prune
from perfkit.optim.runs import finetune
from perfkit.run import RunDirectory
from perfkit.schemas import Bench as BenchConfig
from perfkit.schemas import is_device
from perfkit.system import NO_CUDA, environment, missing_device
from perfkit.tracking import check_online_wandb, log_benchmark

log = logging.getLogger(__name__)


def bench_config(cfg: DictConfig) -> BenchConfig:
    """The ``bench`` node, checked (:class:`perfkit.schemas.Bench`); the ``device`` shortcut replaces
    ``bench.devices``."""
    spec: BenchConfig = typed_node(cfg, "bench")
    if cfg.get("device") is not None:
        if not is_device(str(cfg.device)):
            raise ConfigError(f"device={cfg.device!r} is not valid; allowed: cpu, cuda, cuda:N")
        spec = build_typed(BenchConfig, {**dataclasses.asdict(spec), "devices": [cfg.device]}, "device")
    datasets = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))
    if spec.data not in datasets:
        raise ConfigError(f"bench.data={spec.data!r} is not a dataset config; allowed: {', '.join(datasets)}")
    return spec


def run_bench(cfg: DictConfig) -> BenchmarkReport:
    """Measure the matrix described by ``cfg.bench``; write the report into ``cfg.paths.output_dir``."""
    from tqdm import tqdm

    spec = bench_config(cfg)
    tracking = cfg.get("wandb") if cfg.get("wandb") and cfg.wandb.get("enabled") else None
    if tracking is not None:
        check_online_wandb(bool(tracking.get("offline", True)), "wandb.offline")
    if not torch.cuda.is_available() and all(d.startswith("cuda") for d in spec.devices):
        log.warning("%s: every row will be skipped, so nothing is trained", NO_CUDA)
        spec = dataclasses.replace(spec, train_epochs=0)
    output_dir = Path(cfg.paths.output_dir)
    RunDirectory(output_dir, precious=("report.json",))
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    torch.manual_seed(cfg.seed)
    report = _empty_report(cfg, spec)
    started = load_snapshot()
    # one tick per model prepared and per interleaved round of each cell
    total = len(spec.models) * (spec.cells_per_model * spec.rounds + 1)
    bar = tqdm(total=total, desc="perfkit.bench", unit="round", disable=None, dynamic_ncols=True)
    with warnings.catch_warnings():
        # library deprecation chatter (torch.ao's quantized tensors, Lightning internals) is not actionable here
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        try:
            for name in spec.models:
                bar.set_postfix_str(f"{name}: training" if spec.train_epochs else f"{name}: building")
                prepared = prepare(name, spec, output_dir / "training" / name, seed=cfg.seed)
                bar.update(1)
                for device_name in spec.devices:
                    _measure_device(prepared, torch.device(device_name), spec, report, output_dir, bar)
                if "serve" in spec.modes:
                    _serve(prepared, spec, report, output_dir, bar)
        except BaseException as error:  # Ctrl-C, or the exit Lightning makes of it while training
            if not is_interrupt(error):
                raise
            report.environment["load"] = machine_load(started, load_snapshot())
            report.save(output_dir, plots=bool(report.rows))
            raise KeyboardInterrupt from None
        finally:
            bar.close()
    report.complete = True
    report.environment["load"] = machine_load(started, load_snapshot())
    written = report.save(output_dir)
    log.info("report in %s", output_dir)
    if tracking is not None:
        config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        offline = bool(tracking.get("offline", True))
        project = str(tracking.get("project", "perfkit"))
        log_benchmark(report, written, project=project, offline=offline, run_dir=output_dir, config=config)
    return report


def _empty_report(cfg: DictConfig, spec: BenchConfig) -> BenchmarkReport:

    threads = spec.threads or torch.get_num_threads()
    return BenchmarkReport(
        environment=environment(),
        config={
            "bench": dataclasses.asdict(spec),
            "devices": spec.devices,
            "timing": {"rounds": spec.rounds, "warmup": spec.warmup, "threads": threads},
        },
        complete=False,
    )


def _measure_device(
    prepared: Prepared,
    device: torch.device,
    spec: BenchConfig,
    report: BenchmarkReport,
    output_dir: Path,
    bar: Any,
) -> None:
    modes = [mode for mode in spec.modes if mode != "serve"]  # serving is measured by _serve
    if not modes:
        return
    variants, skipped, failed = build_variants(prepared, device, spec)
    accuracy: dict[str, float | None] = {}
    for mode in modes:
        for batch_size in spec.batch_sizes:
            bar.set_postfix_str(f"{prepared.name} {device.type} {mode} batch {batch_size}")
            images, labels = prepared.batch(batch_size)
            first_inference = mode == "inference" and not accuracy
            ticks = 0

            def tick(done: int, rounds: int) -> None:
                nonlocal ticks
                ticks += 1
                bar.update(1)

            rows = measure_variants(
                variants,
                images,
                model_name=prepared.name,
                device=device,
                mode=mode,
                targets=labels,
                eval_data=prepared.test_batches if first_inference and prepared.trained else None,
                rounds=spec.rounds,
                warmup=spec.warmup,
                threads=spec.threads,
                skipped=skipped,
                failed=failed,
                progress=tick,
                optimizer=spec.optimizer,
                matmul_rates=report.config.setdefault("matmul_tflops", {}),
            )
            bar.update(spec.rounds - ticks)  # a cell with nothing to time ticks no rounds
            for row in rows:
                if first_inference:
                    accuracy[row.variant] = row.test_acc
                elif mode == "inference":
                    row.test_acc = accuracy.get(row.variant)
                row.notes += prepared.notes.get(row.variant, [])
            report.rows += rows
            report.save(output_dir, plots=False)
            forget_compiled_graphs(device)


def _serve(
    prepared: Prepared, spec: BenchConfig, report: BenchmarkReport, output_dir: Path, bar: Any
) -> None:
    """The serving candidates of one model on each device (perfkit.bench.serve); the report links them."""

    for name in spec.devices:
        device = torch.device(name)
        key = prepared.name if device.type == "cpu" else f"{prepared.name} ({device.type})"
        if missing_device(device):
            report.config.setdefault("serve", {})[key] = f"not measured: {missing_device(device)}"
            continue
        built = build_variants(prepared, device, spec)
        served, directory = serve_model(prepared, spec, built, output_dir, bar.set_postfix_str, device)
        report.config.setdefault("serve", {})[key] = f"{directory.name}/serve.md"
        print(served.to_markdown())
        forget_compiled_graphs(device)


def forget_compiled_graphs(device: torch.device) -> None:
    """Start the next cell from a fresh compiler state. ``torch._dynamo.reset()`` drops the compiled
    code and with it the CUDA-graph memory pools captured in it (reduce-overhead, max-autotune), which
    otherwise stay allocated into every later cell: on an H100, ResNet-50's pools left ViT-B/16 out of
    memory. perfkit.bench owns its process, so no user's compiled code is dropped with them."""
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def prepare(name: str, spec: BenchConfig, run_dir: Path, *, seed: int) -> Prepared:
    """Train ``name`` for ``spec.train_epochs`` with perfkit.train (0: random weights), then prune."""

    if not spec.train_epochs:
        return _untrained(name, spec)
    accelerator = (
        "gpu" if torch.cuda.is_available() and any(d.startswith("cuda") for d in spec.devices) else "cpu"
    )
    overrides = [
        f"model={name}",
        f"data={spec.data}",
        f"trainer.max_epochs={max(spec.train_epochs, 1)}",
        f"accelerator={accelerator}",
        f"seed={seed}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
    ]
    run_cfg = compose_config("train", [*overrides, *spec.data_overrides])
    OmegaConf.update(run_cfg, "paths.output_dir", str(run_dir), force_add=True)
    notes: dict[str, list[str]] = {}
    with _quiet_lightning(run_dir):
        if spec.train_epochs:
            train(run_cfg)
        datamodule, classifier = build_run(run_cfg)
        if spec.train_epochs:
            checkpoint = torch.load(
                run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False
            )
            classifier.load_state_dict(checkpoint["state_dict"])
        datamodule.setup("fit")
        test_batches = list(datamodule.test_dataloader())
        calibration = _training_images(datamodule)
        net = classifier.net.eval()
        channels = None
        if {"prune_channels", "compile_channels"} & set(spec.variants):
            channels = prune(
                net, amount=spec.prune_amount, method="channels", example_inputs=test_batches[0][0][:1]
            )
            if spec.train_epochs and spec.finetune_epochs:
                device = torch.device("cuda" if accelerator == "gpu" else "cpu")
                channels = finetune(channels, classifier, "net", datamodule, spec.finetune_epochs, device)
                channels = channels.cpu().eval()
                note = f"fine-tuned {spec.finetune_epochs} epoch(s) after pruning"
                notes = {"prune_channels": [note], "compile_channels": [note]}
    if spec.train_epochs and "prune_unstructured" in spec.variants:
        notes["prune_unstructured"] = ["not fine-tuned: training would refill the zeroed weights"]
    return Prepared(name, net, channels, test_batches, True, notes, calibration)


def _untrained(name: str, spec: BenchConfig) -> Prepared:
    """Random weights (``train_epochs=0``): speed only, no accuracy; any network of
    :data:`~perfkit.bench.variants.MODELS`, torchvision's ResNet-50 and ViT-B/16 included."""
    from hydra.utils import instantiate

    datamodule = instantiate(compose_config("train", [f"data={spec.data}", *spec.data_overrides]).data)
    datamodule.setup("fit")
    test_batches = list(datamodule.test_dataloader())
    net = network(name, tuple(datamodule.input_shape), datamodule.num_classes).eval()
    channels = None
    if {"prune_channels", "compile_channels"} & set(spec.variants):
        channels = prune(
            net, amount=spec.prune_amount, method="channels", example_inputs=test_batches[0][0][:1]
        )
    log.info("%s: random weights (bench.train_epochs=0): speed only, no accuracy", name)
    return Prepared(name, net, channels, test_batches, False, {}, _training_images(datamodule))


def _training_images(datamodule: Any, batches: int = 16) -> list[torch.Tensor]:
    """The first training batches' images: what static int8 ranges are calibrated on."""
    import itertools

    return [images.cpu() for images, *_ in itertools.islice(datamodule.train_dataloader(), batches)]


def build_variants(
    prepared: Prepared, device: torch.device, spec: BenchConfig
) -> tuple[dict[str, nn.Module], dict[str, str], dict[str, str]]:
    """Every variant of the prepared network on ``device``; plus skip reasons and build failures."""
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    variants: dict[str, nn.Module] = {}
    missing = missing_device(device)
    if missing:
        return dict.fromkeys(spec.variants, prepared.net), dict.fromkeys(spec.variants, missing), {}
    net = copy.deepcopy(prepared.net).to(device).eval()
    built: dict[str, nn.Module] = {}
    if prepared.channels is not None:
        built["prune_channels"] = copy.deepcopy(prepared.channels).to(device).eval()
    settings = Settings(
        example_inputs=prepared.test_batches[0][0][:1],
        prune_amount=spec.prune_amount,
        timing_inputs=prepared.batch(spec.batch_sizes[0])[0],
    )
    for name in spec.variants:
        reason = skip_reason(name, device, "inference")
        if reason:
            skipped[name], variants[name] = reason, net
            continue
        try:
            built[name] = variants[name] = build(name, net, built, settings)
        except Exception as error:
            failed[name], variants[name] = first_line(error, typed=True), net
    return variants, skipped, failed


@contextlib.contextmanager
def _quiet_lightning(run_dir: Path) -> Any:
    """Training prints Lightning's banners and result tables: keep them in the run dir, not on the bar."""
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "perfkit.train")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with open(run_dir / "stdout.txt", "a") as stdout, contextlib.redirect_stdout(stdout):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
