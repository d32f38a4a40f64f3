"""Optimize a trained checkpoint and compare it with the original on the held-out test set.

    python -m perfkit.optimize ckpt_path=RUN/checkpoints/best.ckpt quantize=int8_dynamic \\
        prune.amount=0.5 prune.method=channels compile=true

Writes into its run directory: ``optimized.pt`` (the final model, ``torch.load(..., weights_only=False)``),
``comparison.json`` (environment, config, one row per stage, transform reports) and ``comparison.md``.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit.cli import command, run_program
from perfkit.config import ConfigError, check_required, typed_root
from perfkit.schemas import PostTraining

log = logging.getLogger(__name__)


def optimize(cfg: DictConfig) -> dict[str, Any]:
    """Apply the requested transforms stage by stage; measure accuracy, latency, size for each."""
    import torch

    from perfkit.optim import reports
    from perfkit.run import RunDirectory, environment, write_json
    from perfkit.train import build

    check_required(cfg)
    checkpoint, run_cfg = load_run(cfg.ckpt_path)
    device = _check_options(cfg)
    output_dir = Path(cfg.paths.output_dir)
    RunDirectory(output_dir, precious=("comparison.json", "optimized.pt"))

    torch.manual_seed(cfg.seed)
    datamodule, model = build(run_cfg)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(
            f"ckpt_path: the weights do not fit the run's model config (a run trained with channel pruning "
            f"has a smaller architecture than its config describes): {str(error).splitlines()[0]}"
        ) from None
    datamodule.setup("fit")
    stages = _transform_stages(cfg, model, datamodule, run_cfg, device)
    rows = _measure_stages(stages, datamodule, cfg, device)

    final = stages[-1][1]
    torch.save(final, output_dir / "optimized.pt")
    result = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "device": str(device),
        "batch_size": cfg.benchmark.batch_size,
        "threads": cfg.benchmark.threads or torch.get_num_threads(),
        "rounds": cfg.benchmark.rounds,
        "rows": rows,
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


def _check_options(cfg: DictConfig) -> Any:
    """The measuring device, once the options are known to be valid together."""
    import torch

    options = typed_root(cfg, PostTraining)
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda is not available on this machine; use device=cpu")
    if options.quantize and device.type != "cpu":
        raise ConfigError(f"quantize={options.quantize} runs on the CPU only; use device=cpu")
    return device


def _transform_stages(
    cfg: DictConfig, model: Any, datamodule: Any, run_cfg: DictConfig, device: Any
) -> list[tuple[str, Any]]:
    """(label, network) after each transform, in order: original, prune (+ fine-tune), quantize, compile."""
    from perfkit.optim import compile as compile_model
    from perfkit.optim import prune, quantize

    example = next(iter(datamodule.test_dataloader()))[0][:1]
    stages: list[tuple[str, Any]] = [("original", model.net.eval())]
    current = model.net
    if cfg.prune.amount:
        current = prune(current, amount=cfg.prune.amount, method=cfg.prune.method, example_inputs=example)
        label = f"prune {cfg.prune.method} {cfg.prune.amount}"
        if cfg.prune.finetune_epochs:
            current = finetune(current, model, datamodule, run_cfg, cfg.prune.finetune_epochs, device)
            label += f" + fine-tune {cfg.prune.finetune_epochs} ep"
        stages.append((label, current.eval()))
    if cfg.quantize:
        current = quantize(current, scheme=cfg.quantize, backend=cfg.quantize_backend)
        stages.append((f"{stages[-1][0]} + {cfg.quantize}" if len(stages) > 1 else cfg.quantize, current))
    if cfg.compile:
        current = compile_model(current, mode=cfg.compile_mode)
        stages.append((f"{stages[-1][0]} + compile" if len(stages) > 1 else "compile", current.eval()))
    if len(stages) == 1:
        raise ConfigError("nothing to do: set prune.amount, quantize=int8_dynamic and/or compile=true")
    return stages


def _measure_stages(
    stages: list[tuple[str, Any]], datamodule: Any, cfg: DictConfig, device: Any
) -> list[dict[str, Any]]:
    """One row per stage: test accuracy, size, and latency timed interleaved with the original."""
    from perfkit.measure import accuracy as test_accuracy
    from perfkit.measure import speedup
    from perfkit.optim.report import count_parameters, serialized_size

    rows: list[dict[str, Any]] = []
    for name, net in stages:
        if device.type == "cpu" or not cfg.quantize:
            net.to(device)
        accuracy = test_accuracy(net, datamodule.test_dataloader(), device)
        rows.append(
            {
                "variant": name,
                "test_acc": accuracy,
                "parameters": count_parameters(net),
                "size_bytes": serialized_size(net),
            }
        )
        log.info("%s: test accuracy %.4f", name, accuracy)
    timings = _time_stages(stages, datamodule, cfg.benchmark, device)
    baseline = timings["original"]
    for row in rows:
        timing = timings[row["variant"]]
        ratio = speedup(baseline, timing)
        row.update(
            latency_ms_median=timing.median_ms,
            latency_ms_iqr=timing.iqr_ms,
            latency_ms_p90=timing.p90_ms,
            speedup=ratio.median,
            speedup_p10=ratio.low,
            speedup_p90=ratio.high,
            acc_drop_points=100 * (rows[0]["test_acc"] - row["test_acc"]),
            size_ratio=rows[0]["size_bytes"] / row["size_bytes"],
        )
    return rows


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table, one row per stage."""
    header = (
        f"Test set of the run, {result['device']}, batch {result['batch_size']}, {result['threads']} thread(s), "
        f"{result['rounds']} interleaved rounds; speed-up = median of per-round ratios (p10-p90)\n\n"
        "| variant | test acc | Δ acc (points) | latency median (IQR) | speed-up | size | size ratio | parameters |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in result["rows"]:
        lines.append(
            f"| {row['variant']} | {row['test_acc']:.4f} | {0.0 - row['acc_drop_points']:+.2f} "
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


def finetune(net: Any, model: Any, datamodule: Any, run_cfg: DictConfig, epochs: int, device: Any) -> Any:
    """Train the pruned network a few epochs with the run's optimizer, to recover accuracy."""
    import lightning as L
    from hydra.utils import instantiate

    tuned = copy.deepcopy(model)
    tuned.net = net.train()
    tuned.optimizer_factory = instantiate(run_cfg.model.optimizer) if run_cfg.model.get("optimizer") else None
    tuned.scheduler_factory = None
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
    return tuned.net


def _time_stages(
    stages: list[tuple[str, Any]], datamodule: Any, bench: DictConfig, device: Any
) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from perfkit.measure import time_interleaved

    batch = torch.cat([images for images, _ in datamodule.test_dataloader()])[: bench.batch_size].to(device)
    previous_threads = torch.get_num_threads()
    if bench.threads:
        torch.set_num_threads(bench.threads)

    def forward(net: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return net(batch)

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
