"""benchmarks/startup.py and benchmarks/step_costs.py: their counts and reports add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import reporting, startup, step_costs


def test_the_startup_report_splits_the_wall_time_into_phases(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path)
    samples = {
        "import_torch_s": [1.5, 1.6],
        "import_lightning_s": [4.0, 4.4],
        "time_to_first_step_s": [5.0, 5.2],
        "fit_s": [8.0, 8.4],
        "after_fit_s": [0.7, 0.9],
        "wall_s": [13.7, 14.5],
        "val_acc": [0.978, 0.978],
        "test_acc": [0.966, 0.966],
        "exit_s": [1.3, 1.4],
        "exit_frozen_s": [0.3, 0.3],
    }
    path = startup.write(samples, rounds=2)
    summary = json.loads(path.read_text())["summary"]
    # perfkit's own share is paired per round: 5.0 - 4.0 and 5.2 - 4.4
    assert summary["perfkit_before_first_step_s"]["median"] == pytest.approx(0.9)
    table = path.with_suffix(".md").read_text()
    assert "time to the first training step" in table and path.with_suffix(".png").exists()


def test_per_step_calls_are_counted_without_the_once_per_fit_ones() -> None:
    per_step = step_costs.count_per_step(batches=4)
    # every callback's batch hooks and the loop's own: dozens of contexts, and a hook name for each hook
    assert 20 <= per_step["profile"] <= 200
    assert 5 <= per_step["hook_name"] <= per_step["profile"]


def test_each_cut_is_timed_on_both_sides_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path)
    cut = step_costs.cuts({"profile": 50.0, "hook_name": 30.0})[0]
    times = step_costs.measure(cut, rounds=2)
    assert len(times["before"]) == len(times["after"]) == 2 and min(times["before"]) > 0
    result = {
        "name": cut.name,
        "before_us": 1.4,
        "after_us": 0.2,
        "per_step": cut.per_step,
        "counted": cut.counted,
        "saved_us_per_step": 60.0,
    }
    path = step_costs.write([result], rounds=2)
    assert json.loads(path.read_text())["saved_us_per_step_total"] == 60.0
    assert "QuietProfiler" in path.with_suffix(".md").read_text()
