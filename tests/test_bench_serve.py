"""python -m perfkit.bench bench.modes=[serve]: variants and exported artifacts as serving candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from perfkit.bench.suite import run_bench
from perfkit.config import compose_config


@pytest.mark.slow  # trains a model, exports four artifacts: ~30 s
def test_serve_mode_measures_variants_and_artifacts_with_accuracy(tmp_path: Path) -> None:
    cfg = compose_config(
        "bench",
        [
            "bench=serve",
            "bench.models=[mlp]",
            "bench.variants=[eager,int8_dynamic,prune_channels]",
            "bench.exports=[onnx,onnx_int8_static]",
            "bench.data=digits",
            "bench.train_epochs=1",
            "bench.finetune_epochs=0",
            "bench.batch_sizes=[16]",
            "bench.rounds=6",
            "bench.serve_latency_calls=10",
        ],
    )
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path / "run"))
    report = run_bench(cfg)
    assert report.complete and report.rows == []  # serve mode writes its own report
    assert report.config["serve"] == {"mlp": "serve-mlp/serve.md"}  # no cuda in bench.devices
    data = json.loads((tmp_path / "run" / "serve-mlp" / "serve.json").read_text())
    names = [row["name"] for row in data["rows"]]
    assert names == [
        "eager",
        "int8_dynamic",
        "prune_channels",
        "eager -> onnx",
        "eager -> onnx_int8_static",
        "prune_channels -> onnx",
        "prune_channels -> onnx_int8_static",
    ]
    eager = data["rows"][0]
    assert eager["speedup"] == 1.0
    for row in data["rows"]:
        assert row["errors"] == [] and 0 < row["accuracy"] <= 1
        assert row["latency_ms_p50"] > 0 and row["cold_start_s"] > 0 and row["throughput_per_s"] > 0
    # an ONNX artifact computes the same function as the network it came from
    assert data["rows"][3]["accuracy"] == eager["accuracy"]
    assert data["settings"]["model"] == "mlp" and data["settings"]["batch_size"] == 16
    assert (tmp_path / "run" / "serve-mlp" / "serve.png").stat().st_size > 0
