"""``perfkit.optimize``'s work: a trained run's network transformed stage by stage, each stage scored
with the module's own steps, timed, sized, exported and compared; comparison.json, then Markdown."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perfkit.build import build
from perfkit.config import ConfigError, check_required, typed_root
from perfkit.errors import first_line
from perfkit.network import get_network, network_path
from perfkit.optim import reports
from perfkit.optim.evaluator import Evaluator, measure_stages
from perfkit.optim.exporting import FILE_NAMES
from perfkit.optim.runs import load_run
from perfkit.optim.stages import export_stages, save_final, serve_stages, transform_stages
from perfkit.reporting import DictReport, markdown_table
from perfkit.run import RunDirectory
from perfkit.schemas import PostTraining
from perfkit.system import environment, resolve_device

log = logging.getLogger(__name__)


def optimize(cfg: DictConfig) -> dict[str, Any]:
    """Apply the requested transforms stage by stage to the module's network; score each stage with
    the module's own validation/test steps (its own metrics), and time, size and compare it."""
    import torch

    check_required(cfg)
    checkpoint, run_cfg = load_run(cfg.ckpt_path)
    device = check_options(cfg)
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
    stages = transform_stages(cfg, model, path, evaluator, run_cfg, device)
    final = get_network(stages[-1][1], path)
    exports = export_stages(stages, evaluator, cfg, output_dir)
    rows, call = measure_stages(stages, evaluator, cfg, device)
    serve = serve_stages(stages, rows, evaluator.path, call, cfg, output_dir) if cfg.serve.enabled else None

    saved = save_final(final, output_dir / "optimized.pt")
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
    comparison = Comparison(result)
    comparison.save(output_dir)
    print(comparison.to_markdown())
    log.info("optimized model and comparison in %s", output_dir)
    return result


def check_options(cfg: DictConfig) -> Any:
    """The measuring device, once the options are known to be valid together."""

    options = typed_root(cfg, PostTraining)
    device = resolve_device(options.device, "device")
    if options.quantize and device.type != "cpu":
        raise ConfigError(f"quantize={options.quantize} runs on the CPU only; use device=cpu")
    if options.serve.enabled and device.type != "cpu":
        raise ConfigError("serve.enabled=true measures serving on the CPU; use device=cpu")
    return device


class Comparison(DictReport):
    """``perfkit.optimize``'s result (``comparison.json``, ``comparison.md``): one row per stage, the
    exports, serving, the environment."""

    name = "comparison"

    def to_markdown(self) -> str:
        return comparison_markdown(self.data)


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table, one row per stage: the module's own metrics first."""
    rows = result["rows"]
    names = list(dict.fromkeys(name for row in rows for name in row["metrics"]))
    caption = (
        f"{result['module']}{'.' + result['network'] if result['network'] else ''}, {result['device']}, batch {result['batch_size']}, "
        f"{result['threads']} thread(s), {result['rounds']} interleaved rounds; speed-up = median of per-round "
        f"ratios (p10-p90); scored by {result['score']}"
    )
    header = [
        "variant",
        *names,
        "output drift",
        "latency median (IQR)",
        "speed-up",
        "size",
        "size ratio",
        "parameters",
    ]
    table = []
    for row in rows:
        drift = row["output_drift"]
        shown = f"{drift['max_abs_diff_relative']:.2g}" if "max_abs_diff_relative" in drift else "-"
        if "argmax_agreement" in drift:
            shown += f" ({100 * drift['argmax_agreement']:.1f}% same argmax)"
        table.append(
            [
                row["variant"],
                *(f"{row['metrics'][n]:.4f}" if n in row["metrics"] else "-" for n in names),
                shown,
                f"{row['latency_ms_median']:.3f} ms ({row['latency_ms_iqr']:.3f})",
                f"{row['speedup']:.2f}x ({row['speedup_p10']:.2f}-{row['speedup_p90']:.2f})",
                f"{row['size_bytes'] / 1e6:.2f} MB",
                f"{row['size_ratio']:.2f}x",
                f"{row['parameters']:,}",
            ]
        )
    return "\n".join([caption, "", *markdown_table(header, table)])
