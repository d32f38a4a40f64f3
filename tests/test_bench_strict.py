"""perfkit.benchmark and `bench compare` are strict about their inputs: a wrong input is one line,
never a silent table or a traceback."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import perfkit
from perfkit.bench import BenchmarkReport, Row
from perfkit.bench import compare as gate


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 4))


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (torch.randn(4, 3), "shapes cannot be multiplied"),
        (torch.randint(0, 3, (4, 8)), "same dtype"),
        ([torch.randn(4, 8)], "list"),
    ],
)
def test_benchmark_raises_when_no_variant_runs(inputs: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"no variant ran on these inputs \(eager: .*{reason}"):
        perfkit.benchmark({"eager": _mlp()}, inputs, rounds=2, warmup=0)


def test_benchmark_raises_when_train_targets_do_not_fit() -> None:
    with pytest.raises(ValueError, match="no variant ran"):
        perfkit.benchmark(
            {"eager": _mlp()}, torch.randn(4, 8), mode="train", targets=torch.arange(9), rounds=2, warmup=0
        )


def test_benchmark_gives_the_callers_models_back_in_their_mode() -> None:
    training, frozen = _mlp().train(), _mlp().eval()
    frozen[1].train()  # a mixed model: one submodule in training mode
    perfkit.benchmark({"eager": training, "other": frozen}, torch.randn(4, 8), rounds=2, warmup=0)
    assert all(m.training for m in training.modules())
    assert not frozen.training and frozen[1].training and not frozen[0].training


def test_benchmark_warns_when_outputs_disagree_or_inputs_are_not_finite() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = perfkit.benchmark({"eager": _mlp(), "other": nn.Linear(8, 4)}, torch.randn(64, 8), rounds=2)
        nan = torch.randn(8, 8)
        nan[0, 0] = math.nan
        perfkit.benchmark({"eager": _mlp()}, nan, rounds=2, warmup=0)
    messages = [str(w.message) for w in caught]
    assert any("other: outputs disagree with eager's: argmax agrees on" in m for m in messages)
    assert any("example_inputs[0] holds 1 NaN/inf values" in m for m in messages)
    assert any("disagree" in n for n in report.row("model", "other").notes)


def test_benchmark_does_not_flag_a_close_variant() -> None:
    model = _mlp().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = perfkit.benchmark(
            {"eager": model, "rounded": _mlp().eval().half().float()}, torch.randn(64, 8), rounds=5
        )
    assert not report.row("model", "rounded").notes
    assert not [w for w in caught if "disagree" in str(w.message)]


# --- bench compare -------------------------------------------------------------------------


def _row(variant: str, **values: Any) -> dict[str, Any]:
    row = Row("cnn", variant, "cpu", "inference", 64, rounds=20, baseline="eager", latency_ms_median=10.0)
    data = row.__dict__ | values
    return data


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps({"environment": {}, "rows": rows}))
    return str(path)


GOOD = [_row("eager"), _row("compile", speedup=2.0, speedup_ci_low=1.9, speedup_ci_high=2.1)]


@pytest.mark.parametrize(
    ("new_rows", "message"),
    [
        (
            [_row("eager"), _row("compile", speedup=0.0, speedup_ci_low=0.0, speedup_ci_high=0.0)],
            "speed-up 0.0",
        ),
        ([_row("eager"), _row("compile", speedup=2.0)], "without its interval"),
        ([_row("eager", latency_ms_median=None)], "neither a speed-up nor a positive latency"),
        ([*GOOD, GOOD[1] | {"speedup": 1.0}], "rows[1] and rows[2] are both cnn/compile/cpu/inference/64"),
        ([_row("eager"), _row("compile", speedup="fast")], "speedup='fast' is not a number"),
    ],
)
def test_compare_refuses_rows_it_cannot_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new_rows: list[dict[str, Any]], message: str
) -> None:
    base, new = _write(tmp_path / "base.json", GOOD), _write(tmp_path / "new.json", new_rows)
    assert gate.main([base, new]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perfkit.bench compare: error:") and message in err and "\n" not in err


def test_compare_refuses_nan_in_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _write(tmp_path / "base.json", GOOD)
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"rows": [_row("eager"), GOOD[1] | {"speedup": math.nan}]}))  # NaN literal
    assert gate.main([base, str(new)]) == 2
    assert "speedup=nan is not finite" in capsys.readouterr().err


def test_compare_refuses_an_empty_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, new = _write(tmp_path / "base.json", []), _write(tmp_path / "new.json", GOOD)
    assert gate.main([base, new]) == 2
    assert "base.json has no measured rows" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_compare_refuses_a_meaningless_threshold(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path / "r.json", GOOD)
    with pytest.raises(SystemExit) as exit_info:
        gate.main([path, path, "--max-regression", value])
    assert exit_info.value.code == 2


def test_compare_warns_about_mfu_above_100_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _write(tmp_path / "base.json", GOOD)
    new = _write(tmp_path / "new.json", [GOOD[0] | {"mfu_measured": 1.97}, GOOD[1]])
    assert gate.main([base, new]) == 0
    assert "mfu_measured 197% is above 100%: its reference rate is wrong" in capsys.readouterr().err


def test_loaded_reports_keep_their_rows() -> None:
    report = BenchmarkReport.from_dict({"rows": GOOD})
    assert [r.variant for r in report.rows] == ["eager", "compile"]


# --- the benchmark regression gate -----------------------------------------------------------------
def _report(tmp_path: Path, name: str, rows: Any) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"rows": rows}) if not isinstance(rows, str) else rows)
    return path


_ROW = {
    "model": "mlp",
    "variant": "compiled",
    "device": "cpu",
    "mode": "inference",
    "batch_size": 8,
    "speedup": 1.5,
    "speedup_ci_low": 1.4,
    "speedup_ci_high": 1.6,
}


@pytest.mark.hostile
@pytest.mark.parametrize(
    ("new", "status", "message"),
    [
        ([], 2, "has no measured rows"),
        ([{**_ROW, "status": "failed"}], 2, "has no measured rows"),
        ([{**_ROW, "variant": "other"}], 1, "regression(s): mlp/compiled"),
        ([{**_ROW, "speedup": "fast"}], 2, "rows[0].speedup='fast' is not a number"),
        ([{**_ROW, "batch_size": "eight"}], 2, "rows[0].batch_size='eight' is not a number"),
        ([{**_ROW, "model": 3}], 2, "rows[0].model=3 is not text"),
        ([{**_ROW, "notes": "fine"}], 2, "rows[0].notes='fine' is not a list of text"),
        ([{**_ROW, "speedup": None, "model": None}], 2, "rows[0].model=None is not text"),
        (["a row"], 2, "rows[0] is str, not an object"),
        ([{"variant": "x"}], 2, "a row is not a benchmark row"),
        ("{not json", 2, "not a JSON benchmark report"),
        ("[1, 2]", 2, "no 'rows' list"),
        ('{"rows": {}}', 2, "no 'rows' list"),
        ("", 2, "not a JSON benchmark report"),
    ],
    ids=lambda value: None,
)
def test_compare_fails_on_a_report_that_lost_or_mangled_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new: Any, status: int, message: str
) -> None:
    from perfkit.bench.compare import main

    base = _report(tmp_path, "base", [_ROW])
    assert main([str(base), str(_report(tmp_path, "new", new))]) == status
    assert message in capsys.readouterr().err
