"""perfkit.serving: cold start in a fresh process, interleaved batch-1 percentiles and throughput, and
what each candidate failed at, said beside its other figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import perfkit
from perfkit.optim.exporting import load
from perfkit.serving import Candidate, serve_benchmark
from tests.helpers.toy_models import TinyMLP

QUICK = {"latency_calls": 12, "rounds": 3, "batch_size": 16}


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this candidate cannot serve")


def test_every_candidate_measured_alike_and_a_failing_one_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyMLP().eval()
    artifact = perfkit.export(model, model.example_inputs(), path=tmp_path / "mlp.onnx")
    candidates = [
        Candidate("eager", model, accuracy=0.9),
        Candidate("onnx", load(artifact), "onnx", str(artifact), accuracy=0.9),
        Candidate("broken", Broken()),
    ]
    report = serve_benchmark(candidates, (model.example_inputs(),), concurrency=2, **QUICK)
    eager, onnx, broken = report.rows
    for row in (eager, onnx):
        assert row.errors == [], row.errors
        assert 0 < row.latency_ms_p50 <= row.latency_ms_p90 <= row.latency_ms_p99  # type: ignore[operator]
        assert row.throughput_per_s and row.loaded_throughput_per_s and row.cold_start_s
        assert row.peak_rss_mb and row.peak_rss_mb > 10
        breakdown = row.cold_start_breakdown
        assert set(breakdown) == {"import_s", "load_s", "first_call_s"}
        assert sum(breakdown.values()) < row.cold_start_s
    # the ONNX serving process never imports torch; the pickled module's needs it
    assert onnx.torch_imported is False and eager.torch_imported is True
    assert onnx.size_bytes == artifact.stat().st_size
    assert broken.latency_ms_p50 is None and any("cannot serve" in e for e in broken.errors)

    written = report.save(tmp_path / "out")
    assert [p.name for p in written] == ["serve.json", "serve.md", "serve.png"]
    data = json.loads((tmp_path / "out" / "serve.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["eager", "onnx", "broken"]
    markdown = (tmp_path / "out" / "serve.md").read_text()
    assert "| onnx | 0.9000 |" in markdown and "- broken: fails in this process" in markdown


def test_a_pickled_module_the_serving_process_cannot_load_is_said(tmp_path: Path) -> None:
    """A module defined where a fresh process cannot import it: the cold start names the error, the
    in-process figures stay."""

    class Local(nn.Module):  # a local class cannot be unpickled anywhere
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    report = serve_benchmark([Candidate("local", Local())], (torch.randn(4, 3),), **QUICK)
    (row,) = report.rows
    assert row.cold_start_s is None and row.latency_ms_p50 is not None
    assert len(row.errors) == 1 and row.errors[0].startswith("cold start not measured: ")
    assert "Local" in row.errors[0]


def test_no_candidates_twice_a_name_or_an_unknown_kind_is_refused() -> None:
    x = (torch.randn(2, 3),)
    with pytest.raises(ValueError, match="no candidates"):
        serve_benchmark([], x)
    with pytest.raises(ValueError, match="given more than once: a"):
        serve_benchmark([Candidate("a", Broken()), Candidate("a", Broken())], x)
    with pytest.raises(ValueError, match="unknown kind"):
        serve_benchmark([Candidate("a", Broken(), kind="tflite")], x)


def test_the_table_has_a_header_cell_for_every_column() -> None:
    from perfkit.serving import ServeRow, _table

    for loaded in (False, True):
        header, rule, row = _table([ServeRow("x", "torch", 1, 0.5)], loaded).splitlines()
        assert header.count("|") == rule.count("|") == row.count("|")


def test_a_saved_report_reads_back_the_same(tmp_path: Path) -> None:
    from perfkit.serving import ServeReport, ServeRow

    settings = {
        "batch_size": 4,
        "latency_calls": 5,
        "rounds": 6,
        "cold_starts": 1,
        "concurrency": 0,
        "threads": 1,
    }
    report = ServeReport(
        [
            ServeRow(
                "x", "onnx", 10, 0.9, latency_ms_p50=1.0, latency_ms_p90=2.0, latency_ms_p99=3.0, errors=["e"]
            )
        ],
        settings,
        {},
    )
    report.save(tmp_path)
    again = ServeReport.from_dict(json.loads((tmp_path / "serve.json").read_text()))
    assert again.to_dict() == report.to_dict()


def test_when_no_candidate_runs_each_says_why() -> None:
    candidates = [Candidate("a", Broken()), Candidate("b", Broken())]
    report = serve_benchmark(candidates, (torch.randn(2, 3),), cold_starts=0, **QUICK)
    assert all(r.cold_start_s is None for r in report.rows)  # cold_starts=0: none
    assert all(r.latency_ms_p50 is None and any("cannot serve" in e for e in r.errors) for r in report.rows)
    assert report.settings["calls_per_throughput_sample"] == 0


def test_a_cold_start_that_hangs_is_stopped_and_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from perfkit.serving import cold_start

    monkeypatch.setattr(cold_start, "COLD_START_TIMEOUT_S", 0.01)
    model = TinyMLP().eval()
    report = serve_benchmark([Candidate("eager", model)], (model.example_inputs(),), **QUICK)
    (row,) = report.rows
    assert row.cold_start_s is None and row.latency_ms_p50 is not None
    assert row.errors == ["cold start failed: no answer within 0.01 s (the process was stopped)"]
