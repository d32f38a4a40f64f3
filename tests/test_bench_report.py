"""perfkit.bench.report and compare: the report round-trips through JSON and draws; the regression
gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import perfkit
from perfkit.bench import BenchmarkReport, Row
from perfkit.bench import compare as gate
from tests.helpers.checks import classifier
from tests.helpers.toy_models import FailingVariant


def _report() -> BenchmarkReport:
    inputs = torch.eye(4)
    return perfkit.benchmark(
        {"eager": classifier(True), "compile": classifier(True), "broken": FailingVariant()},
        inputs,
        eval_data=[(inputs, torch.arange(4))],
        rounds=6,
        warmup=1,
        model_name="toy",
    )


def test_report_round_trips_through_json_and_draws(tmp_path: Path) -> None:
    report = _report()
    report.rows[1].speedup_ci_low = float("nan")  # JSON has no NaN: it must become null
    written = report.save(tmp_path)
    assert {p.name for p in written} == {
        "report.json",
        "report.md",
        "latency.png",
        "accuracy_vs_latency.png",
        "size_vs_latency.png",
    }
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["rows"][1]["speedup_ci_low"] is None
    again = BenchmarkReport.from_json(tmp_path / "report.json")
    assert [r.key for r in again.rows] == [r.key for r in report.rows]
    assert again.row("toy", "eager").latency_ms_median == report.row("toy", "eager").latency_ms_median
    markdown = (tmp_path / "report.md").read_text()
    assert "## inference, cpu, batch 4" in markdown and "| toy | eager |" in markdown
    assert (
        "| cpu | failed | RuntimeError: this variant cannot run | toy: broken (inference; batch 4) |"
        in markdown
    )
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("not json", "not a JSON benchmark report"), ("[1, 2]", "no 'rows' list")],
)
def test_reading_something_else_is_one_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        BenchmarkReport.from_json(path)


def _gate_report(speedup: float, low: float, high: float, status: str = "ok") -> BenchmarkReport:
    common: dict[str, Any] = {"batch_size": 64, "rounds": 20, "baseline": "eager"}
    return BenchmarkReport(
        environment={},
        rows=[
            Row("cnn", "eager", "cpu", "inference", latency_ms_median=10.0, **common),
            Row(
                "cnn",
                "compile",
                "cpu",
                "inference",
                status=status,
                speedup=speedup if status == "ok" else None,
                speedup_ci_low=low,
                speedup_ci_high=high,
                **common,
            ),
        ],
    )


@pytest.mark.parametrize(
    ("new", "verdict", "exit_code"),
    [
        ((1.5, 1.45, 1.55), "REGRESSED", 1),  # 25% slower, intervals apart
        ((1.5, 1.2, 1.95), "slower, within noise", 0),  # 25% slower, but the intervals overlap
        ((1.95, 1.9, 2.0), "ok", 0),  # 2.5% slower: under the threshold
        ((2.6, 2.5, 2.7), "improved", 0),
        ((0.0, 0.0, 0.0, "failed"), "FAILED", 1),
    ],
)
def test_compare_gates_on_threshold_and_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new: tuple[Any, ...], verdict: str, exit_code: int
) -> None:
    base_path, new_path = tmp_path / "base.json", tmp_path / "new.json"
    _gate_report(2.0, 1.9, 2.1).to_json(base_path)
    _gate_report(*new).to_json(new_path)
    assert gate.main([str(base_path), str(new_path), "--max-regression", "10"]) == exit_code
    output = capsys.readouterr().out
    assert "| cnn | compile | cpu | inference | 64 | 2.00x [1.90-2.10] |" in output
    assert output.count(verdict) >= 1
    assert "baseline (not gated)" in output


def test_compare_rejects_a_missing_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gate.main([str(tmp_path / "nope.json"), str(tmp_path / "nope.json")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"perfkit.bench compare: error: {tmp_path / 'nope.json'}: no such file"
    )
