"""Issue 4's targets, measured on this machine: int8 dynamic, compile, channel pruning.

Each figure is a ratio measured side by side in one process, variants interleaved round by round
(perfkit.measure), batch 64, 1 thread, on checkpoints trained here on the bundled MNIST digits.
Results (with the machine) are written to benchmarks/results/optim_targets-cpu.{json,md}. A target
that is missed is recorded as missed, not hidden: the test asserts correctness, not speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from perfkit.config import config_dir
from perfkit.measure import speedup, time_interleaved
from perfkit.optimize import optimize
from perfkit.run import write_json
from perfkit.system import environment
from perfkit.train import train

RESULTS = Path(__file__).parent / "results" / "optim_targets-cpu.json"
NOTES = [
    "Reading the misses:",
    "- int8 dynamic: this CPU has AVX2 but no AVX-512/VNNI int8 dot-product instructions, so int8 GEMMs",
    "  gain little. fbgemm, x86 and onednn engines all measured 0.95-1.2x here, and qnnpack was slower.",
    "  The weights do shrink 3.95x (mlp). On the vit only its 9 plain Linear layers are quantized;",
    "  attention's fused in/out projections are not dynamically quantizable, hence 1.56x.",
    "- compile: inference of the small cnn gains ~1.6x (Inductor's freezing did not add more); its",
    "  training step is slower compiled, as FACTS.md also measured (0.82-0.85x there).",
]
TIMING = ["benchmark.batch_size=64", "benchmark.threads=1", "benchmark.rounds=40", "benchmark.warmup=5"]


def _compose(name: str, overrides: list[str], output_dir: Path) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(name, overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each model trained with the default job's settings (5 epochs on the bundled digits)."""
    found = {}
    for model in ("cnn", "mlp", "vit"):
        run_dir = tmp_path_factory.mktemp(model)
        overrides = [f"model={model}", "accelerator=cpu", "logger=none", "trainer.enable_progress_bar=false"]
        train(_compose("train", overrides, run_dir))
        found[model] = run_dir / "checkpoints" / "best.ckpt"
    return found


def _record(name: str, target: str, met: bool, figures: dict[str, Any]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["environment"] = environment()
    results.setdefault("targets", {})[name] = {"target": target, "met": met, **figures}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, results)
    _write_markdown(results)


def _write_markdown(results: dict[str, Any]) -> None:
    env = results["environment"]
    lines = [
        "# Optimization targets (issue 4) on CPU",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, SIMD: {', '.join(env['cpu_simd']) or 'none'}; "
        f"{env['platform']}; torch {env['torch']}, lightning {env['lightning']}. Batch 64, 1 thread, "
        "interleaved rounds; speed-up = median of per-round ratios (p10-p90).",
        "",
        "| measurement | target | result | met |",
        "|---|---|---|---|",
    ]
    for name, entry in sorted(results["targets"].items()):
        lines.append(
            f"| {name} | {entry['target']} | {entry['summary']} | {'yes' if entry['met'] else '**no**'} |"
        )
    lines += ["", *NOTES]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _optimize(checkpoint: Path, tmp_path: Path, *overrides: str) -> dict[str, Any]:
    return optimize(_compose("optimize", [f"ckpt_path={checkpoint}", *TIMING, *overrides], tmp_path))


@pytest.mark.parametrize("model", ["mlp", "vit"])
def test_int8_dynamic_on_linear_heavy_models(
    checkpoints: dict[str, Path], tmp_path: Path, model: str
) -> None:
    original, quantized = _optimize(checkpoints[model], tmp_path, "quantize=int8_dynamic")["rows"]
    from perfkit.models import MLP, vit
    from perfkit.optim import quantize, reports

    net = MLP((1, 28, 28), 10) if model == "mlp" else vit((1, 28, 28), 10)
    report = reports(quantize(net))[-1]
    ratio = quantized["speedup"]
    met = ratio >= 2.0 and quantized["acc_drop_points"] <= 0.5 and report.size_ratio >= 3.5
    _record(
        f"int8 dynamic, {model}",
        ">= 2.0x faster, <= 0.5 pt accuracy drop, Linear weights >= 3.5x smaller",
        met,
        {
            "speedup": ratio,
            "speedup_p10": quantized["speedup_p10"],
            "speedup_p90": quantized["speedup_p90"],
            "acc_fp32": original["test_acc"],
            "acc_int8": quantized["test_acc"],
            "size_ratio": report.size_ratio,
            "summary": f"{ratio:.2f}x ({quantized['speedup_p10']:.2f}-{quantized['speedup_p90']:.2f}), "
            f"acc {original['test_acc']:.3f} -> {quantized['test_acc']:.3f}, {report.size_ratio:.2f}x smaller",
        },
    )
    assert quantized["acc_drop_points"] < 5  # int8 must not break the model


def test_compile_cnn_inference(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    original, compiled = _optimize(checkpoints["cnn"], tmp_path, "compile=true")["rows"]
    ratio = compiled["speedup"]
    _record(
        "compile, cnn inference",
        ">= 2.0x faster than eager",
        ratio >= 2.0,
        {
            "speedup": ratio,
            "speedup_p10": compiled["speedup_p10"],
            "speedup_p90": compiled["speedup_p90"],
            "summary": f"{ratio:.2f}x ({compiled['speedup_p10']:.2f}-{compiled['speedup_p90']:.2f}), "
            f"acc {original['test_acc']:.3f} -> {compiled['test_acc']:.3f}",
        },
    )
    assert abs(compiled["test_acc"] - original["test_acc"]) < 0.01


def test_compile_cnn_training_step() -> None:
    from perfkit.models import SmallCNN

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))

    def make_step(compiled: bool):  # type: ignore[no-untyped-def]
        net = SmallCNN((1, 28, 28), 10)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()

        if compiled:
            net.forward = torch.compile(net.forward)  # type: ignore[method-assign]
        return step

    try:
        timings = time_interleaved(
            {"eager": make_step(False), "compiled": make_step(True)}, rounds=40, warmup=5
        )
    finally:
        torch.set_num_threads(threads)
    ratio = speedup(timings["eager"], timings["compiled"])
    _record(
        "compile, cnn training step",
        ">= 1.3x faster than eager (forward + backward + SGD)",
        ratio.median >= 1.3,
        {
            "speedup": ratio.median,
            "speedup_p10": ratio.low,
            "speedup_p90": ratio.high,
            "eager_ms": timings["eager"].median_ms,
            "compiled_ms": timings["compiled"].median_ms,
            "summary": f"{ratio} ({timings['eager'].median_ms:.1f} ms -> {timings['compiled'].median_ms:.1f} ms)",
        },
    )


def test_channel_pruning_then_fine_tuning_cnn(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result = _optimize(
        checkpoints["cnn"], tmp_path, "prune.amount=0.5", "prune.method=channels", "prune.finetune_epochs=2"
    )
    original, pruned = result["rows"]
    ratio = pruned["speedup"]
    met = ratio >= 1.6 and pruned["acc_drop_points"] <= 1.0
    _record(
        "channels 0.5 + fine-tune 2 epochs, cnn",
        ">= 1.6x faster than dense, <= 1 pt accuracy drop",
        met,
        {
            "speedup": ratio,
            "speedup_p10": pruned["speedup_p10"],
            "speedup_p90": pruned["speedup_p90"],
            "acc_dense": original["test_acc"],
            "acc_pruned": pruned["test_acc"],
            "parameters": [original["parameters"], pruned["parameters"]],
            "summary": f"{ratio:.2f}x ({pruned['speedup_p10']:.2f}-{pruned['speedup_p90']:.2f}), "
            f"acc {original['test_acc']:.3f} -> {pruned['test_acc']:.3f}, "
            f"{original['parameters']:,} -> {pruned['parameters']:,} parameters",
        },
    )
    assert pruned["parameters"] < 0.3 * original["parameters"]
