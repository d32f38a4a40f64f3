"""`python -m perfkit.optimize`: a trained checkpoint, optimized and compared on the test set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from perfkit.config import ConfigError, compose_config
from perfkit.optimize import optimize
from perfkit.train import train
from tests.helpers import FAST, run_cli, run_failure

FAST_TIMING = ["benchmark.rounds=3", "benchmark.warmup=1", "benchmark.batch_size=16"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real perfkit training run (the cnn, a few batches) and its best checkpoint."""
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_config("train", [*FAST, "logger=none", "trainer.limit_train_batches=20"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    train(cfg)
    return run_dir / "checkpoints" / "best.ckpt"


def _compose(*overrides: str, output_dir: Path) -> DictConfig:
    cfg = compose_config("optimize", [*FAST_TIMING, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def test_prune_finetune_quantize_compared_with_original(trained_checkpoint: Path, tmp_path: Path) -> None:
    cfg = _compose(
        f"ckpt_path={trained_checkpoint}",
        "prune.amount=0.5",
        "prune.method=channels",
        "prune.finetune_epochs=1",
        "quantize=int8_dynamic",
        output_dir=tmp_path,
    )
    result = optimize(cfg)
    names = [row["variant"] for row in result["rows"]]
    assert names[:2] == ["original", "prune channels 0.5 + fine-tune 1 ep"]
    # the backend is chosen by timing both libraries on this machine, and named
    assert re.fullmatch(
        r"prune channels 0\.5 \+ fine-tune 1 ep \+ int8_dynamic \((torch_ao|torchao)\)", names[2]
    )
    choice = result["reports"][1]["measured"]
    assert set(choice["median_ms"]) == {"torch_ao", "torchao"} and choice["run"] == "eager"
    assert names[2].endswith(f"({min(choice['median_ms'], key=choice['median_ms'].get)})")
    original, pruned, quantized = result["rows"]
    assert original["speedup"] == 1.0 and original["acc_drop_points"] == 0.0
    assert pruned["parameters"] < 0.3 * original["parameters"]
    assert quantized["size_bytes"] < pruned["size_bytes"] < original["size_bytes"]
    for row in result["rows"]:
        assert 0 <= row["test_acc"] <= 1 and row["latency_ms_median"] > 0
        assert row["speedup_p10"] <= row["speedup"] <= row["speedup_p90"]
    assert [r["transform"].split("(")[0] for r in result["reports"]] == ["prune", "quantize"]

    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["rows"] == result["rows"]
    assert "| original |" in (tmp_path / "comparison.md").read_text()
    final = torch.load(tmp_path / "optimized.pt", weights_only=False)
    assert final(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_original_accuracy_is_the_checkpoints(trained_checkpoint: Path, tmp_path: Path) -> None:
    metrics = json.loads((trained_checkpoint.parent.parent / "metrics.json").read_text())
    result = optimize(
        _compose(
            f"ckpt_path={trained_checkpoint}",
            "prune.amount=0.3",
            "prune.method=l1_unstructured",
            "prune.finetune_epochs=0",
            output_dir=tmp_path,
        )
    )
    # the same weights on the same held-out split as perfkit.train's test
    assert result["rows"][0]["test_acc"] == pytest.approx(metrics["test"]["acc"], abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt' is not a file"),
        (
            ["quantize=int4"],
            "quantize='int4' is not valid; allowed: int8_dynamic, int8_weight_only, int8_static, null",
        ),
        ([], "nothing to do: set prune.amount"),
        (["prune.amount=2"], r"prune.amount=2 is not valid: use a number in \[0, 1\)"),
        (["device=tpu", "quantize=int8_dynamic"], r"device='tpu' is not valid; allowed: cpu, cuda"),
        (["device=meta", "quantize=int8_dynamic"], r"device='meta' is not valid; allowed: cpu, cuda"),
    ],
)
def test_bad_input(trained_checkpoint: Path, tmp_path: Path, overrides: list[str], message: str) -> None:
    args = [f"ckpt_path={trained_checkpoint}", "prune.finetune_epochs=0", *overrides]
    with pytest.raises((ConfigError, ValueError), match=message):
        optimize(_compose(*args, output_dir=tmp_path))


def test_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    code, _, err = run_cli_optimize("quantize=int8_dynamic", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [
        "perfkit.optimize: error: missing required value(s): ckpt_path (set ckpt_path=... on the command line)"
    ]


def test_checkpoint_outside_a_run_is_refused(tmp_path: Path, trained_checkpoint: Path) -> None:
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes(trained_checkpoint.read_bytes())
    with pytest.raises(ConfigError, match=r"no config\.yaml in its run directory"):
        optimize(_compose(f"ckpt_path={stray}", "quantize=int8_dynamic", output_dir=tmp_path / "out"))


def test_cli_refuses_to_overwrite_a_comparison(trained_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "comparison.json").write_text("{}")
    code, _, err = run_cli_optimize(
        f"ckpt_path={trained_checkpoint}", "quantize=int8_dynamic", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert code == 2 and "already holds an earlier run (comparison.json)" in err
    assert (tmp_path / "comparison.json").read_text() == "{}"


def run_cli_optimize(*args: str, cwd: Path) -> tuple[int, str, str]:
    return run_cli(*args, cwd=cwd, module="perfkit.optimize")


@pytest.mark.slow
def test_cli_with_compile(trained_checkpoint: Path, tmp_path: Path) -> None:
    code, out, err = run_cli_optimize(
        f"ckpt_path={trained_checkpoint}",
        "quantize=int8_dynamic",
        "compile=true",
        *FAST_TIMING,
        "hydra.run.dir=out",
        cwd=tmp_path,
    )
    assert code == 0, run_failure(err)
    assert re.search(r"\| int8_dynamic \((torch_ao|torchao)\) \+ compile \|", out)
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())["rows"]
    assert abs(rows[2]["test_acc"] - rows[1]["test_acc"]) < 0.01  # compile keeps the numbers


def test_export_adds_checked_artifacts_scored_like_the_stages(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    """export=[onnx]: the pruned network as an ONNX file in the run directory, scored by the module's
    own test step through ONNX Runtime and timed beside the other stages."""
    cfg = _compose(
        f"ckpt_path={trained_checkpoint}",
        "prune.amount=0.5",
        "prune.finetune_epochs=0",
        "export=[onnx]",
        output_dir=tmp_path,
    )
    result = optimize(cfg)
    pruned, exported = result["rows"][1:]
    assert exported["variant"] == "prune channels 0.5 -> onnx"
    assert exported["test_acc"] == pytest.approx(pruned["test_acc"], abs=1e-3)
    # drift is against the original; the artifact's against the pruned network is in its record
    assert exported["output_drift"]["argmax_agreement"] == pytest.approx(
        pruned["output_drift"]["argmax_agreement"], abs=0.02
    )
    assert exported["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert exported["parameters"] == pruned["parameters"] and exported["latency_ms_median"] > 0
    (record,) = result["exports"]
    assert record["format"] == "onnx" and record["max_abs_diff_relative"] < 1e-4
    assert record["argmax_agreement"] == 1.0
    assert "model.onnx" in (tmp_path / "serve.md").read_text()


def test_a_format_that_cannot_export_is_one_line_and_the_others_still_run(
    trained_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perfkit.optim import exporting

    real = exporting._write

    def aoti_fails(format: str, *args: object) -> None:
        if format == "aoti":
            raise exporting.ExportError("cannot export the model (operator aten::fancy): try another format")
        real(format, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(exporting, "_write", aoti_fails)
    result = optimize(_compose(f"ckpt_path={trained_checkpoint}", "export=[aoti,onnx]", output_dir=tmp_path))
    assert [row["variant"] for row in result["rows"]] == ["original", "onnx"]
    failed, done = result["exports"]
    assert "aten::fancy" in failed["error"] and "error" not in done
    assert not (tmp_path / "model.pt2").exists()


@pytest.mark.slow  # ~11 s: three exports, three fresh serving processes
def test_serve_measures_every_stage_and_artifact_with_its_accuracy(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    """serve.enabled=true: each comparison row is a serving candidate (cold start in a fresh process,
    batch-1 percentiles, throughput), its accuracy the row's; files beside the comparison."""
    cfg = _compose(
        f"ckpt_path={trained_checkpoint}",
        "export=[onnx,onnx_int8_static]",
        "serve.enabled=true",
        "serve.latency_calls=10",
        "serve.rounds=3",
        "serve.batch_size=8",
        output_dir=tmp_path,
    )
    result = optimize(cfg)
    rows = result["rows"]
    served = result["serve"]["rows"]
    assert (
        [r["name"] for r in served]
        == [r["variant"] for r in rows]
        == ["original", "onnx", "onnx_int8_static"]
    )
    for row, serve in zip(rows, served, strict=True):
        assert serve["accuracy"] == row["test_acc"] and serve["errors"] == []
        assert serve["cold_start_s"] > 0 and serve["latency_ms_p50"] > 0 and serve["throughput_per_s"] > 0
    assert [r["kind"] for r in served] == ["torch", "onnx", "onnx"]
    assert served[1]["torch_imported"] is False
    assert {"serve.json", "serve.md", "serve.png", "model_int8_static.onnx"} <= {
        p.name for p in tmp_path.iterdir()
    }
    (static,) = [e for e in result["exports"] if e["format"] == "onnx_int8_static"]
    assert static["calibration_batches"] == 16  # training batches, never the held-out ones


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "export=[tflite]",
            "export: 'tflite' is not valid; allowed: aoti, onnx, onnx_int8, onnx_int8_static",
        ),
        ("serve.batch_size=0", "serve.batch_size=0: use an integer >= 1"),
        ("serve.cold_starts=-1", "serve.cold_starts=-1: use 0 (none)"),
        ("serve.concurrency=-1", "serve.concurrency=-1: use 0 (off)"),
    ],
)
def test_bad_export_and_serve_options_are_one_line(
    override: str, message: str, trained_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        optimize(_compose(f"ckpt_path={trained_checkpoint}", override, output_dir=tmp_path))
