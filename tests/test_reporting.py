"""perfkit.reporting: one report protocol that every result follows, and one Markdown table writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfkit.bench.report import BenchmarkReport
from perfkit.evaluation import RunMetrics
from perfkit.optim.pipeline import Comparison
from perfkit.profiling.report import ProfileReport
from perfkit.reporting import Report, markdown_table
from perfkit.serving import ServeReport
from perfkit.tune.report import TuneResult


def test_a_cell_cannot_break_the_table() -> None:
    lines = markdown_table(["name", "value"], [["a | b", "line\nbreak"], ["c", 1.5]], right=[1])
    assert lines == ["| name | value |", "|---|---:|", "| a \\| b | line break |", "| c | 1.5 |"]


@pytest.mark.parametrize(
    "kind", [BenchmarkReport, RunMetrics, Comparison, ProfileReport, ServeReport, TuneResult]
)
def test_every_result_is_a_report(kind: type) -> None:
    for method in ("to_dict", "to_markdown", "save"):
        assert callable(getattr(kind, method, None)), f"{kind.__name__}.{method}"


def _metrics() -> RunMetrics:
    return RunMetrics(
        val={"acc": 0.9}, test={"acc": 0.89}, speed={"train_samples_per_s": 1234.0, "time_to_first_step_s": 0.5},
        epochs=1, optimizer_steps=10, world_size=2, device="cpu", accelerator="cpu", strategy="ddp",
        process_group_backend="gloo", precision="32-true", seed=0, best_checkpoint=None, evaluated="best checkpoint",
        parameters=1000, optimize={"compile": False, "channels_last": {"converted_weights": 2}}, data_loading={},
        resumed_from=None, wall_time_s=3.0, skipped={"test": "no test_step"},
    )  # fmt: skip


def test_run_metrics_save_their_json_and_a_readable_view(tmp_path: Path) -> None:
    metrics = _metrics()
    assert isinstance(metrics, Report)
    written = metrics.save(tmp_path)
    assert [p.name for p in written] == ["metrics.json", "metrics.md"]
    assert json.loads(written[0].read_text()) == json.loads(json.dumps(metrics.to_dict()))
    text = written[1].read_text()
    assert "| test/acc | 0.89 |" in text and "| optimizations | channels_last |" in text
    assert "- test: no test_step" in text


def test_comparison_and_profile_save_what_their_commands_wrote(tmp_path: Path) -> None:
    profile = ProfileReport({"breakdown": None, "top_operators": {}, "trace_files": [], "schedule": {}})
    assert [p.name for p in profile.save(tmp_path)] == ["profile.json", "profile.md"]
    assert "No profiled step completed" in (tmp_path / "profile.md").read_text()
    assert isinstance(profile, Report) and isinstance(Comparison({}), Report)
