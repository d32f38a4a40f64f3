"""Noise a reader can see: cells whose samples spread are re-measured, then marked noisy and left out
of verdicts; a busy machine is recorded and said; MFU never reads above 100%."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from torch import nn

import perfkit
from perfkit.bench import BenchmarkReport, Row
from perfkit.bench import compare as gate
from perfkit.bench.mfu import _valid_fraction
from perfkit.measure import busy_sentence, load_snapshot, machine_load


class Sleeps(nn.Module):
    """Sleeps the next of ``pattern``'s seconds on each call: steady with one value, noisy with two."""

    def __init__(self, *pattern: float) -> None:
        super().__init__()
        self.pattern = itertools.cycle(pattern)
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(next(self.pattern))
        return self.linear(x)


def test_a_noisy_cell_is_measured_again_then_marked() -> None:
    report = perfkit.benchmark(
        {"eager": Sleeps(0.004), "jumpy": Sleeps(0.001, 0.001, 0.006, 0.006)},
        torch.zeros(2, 4),
        rounds=8,
        warmup=0,
    )
    steady, jumpy = report.row("model", "eager"), report.row("model", "jumpy")
    assert jumpy.noisy and jumpy.rounds == 16 and jumpy.dispersion is not None and jumpy.dispersion > 0.1
    assert not steady.noisy and steady.dispersion is not None and steady.dispersion < 0.1
    markdown = report.to_markdown()
    assert "*noisy* (IQR" in markdown and "Cells marked *noisy*" in markdown


def test_a_steady_cell_is_measured_once() -> None:
    report = perfkit.benchmark({"eager": Sleeps(0.003), "other": Sleeps(0.002)}, torch.zeros(2, 4), rounds=8)
    assert {r.rounds for r in report.rows} == {8} and not any(r.noisy for r in report.rows)


def test_the_gate_does_not_judge_noisy_rows(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def report(speedup: float, noisy: bool) -> BenchmarkReport:
        common: dict[str, Any] = {"batch_size": 8, "rounds": 20, "baseline": "eager"}
        return BenchmarkReport({}, rows=[
            Row("cnn", "eager", "cpu", "inference", latency_ms_median=5.0, **common),
            Row("cnn", "compile", "cpu", "inference", speedup=speedup, speedup_ci_low=speedup * 0.98,
                speedup_ci_high=speedup * 1.02, noisy=noisy, dispersion=0.3 if noisy else 0.02, **common),
        ])  # fmt: skip

    report(2.0, False).to_json(tmp_path / "base.json")
    report(1.0, True).to_json(tmp_path / "new.json")  # 50% slower, far beyond the noise, but noisy
    assert gate.main([str(tmp_path / "base.json"), str(tmp_path / "new.json")]) == 0
    out = capsys.readouterr().out
    assert "noisy: could not decide" in out and "1 measurement(s) too noisy to judge" in out
    report(1.0, False).to_json(tmp_path / "new.json")
    assert gate.main([str(tmp_path / "base.json"), str(tmp_path / "new.json")]) == 1


def test_a_busy_machine_is_recorded_and_said() -> None:
    # not this process's child (whose CPU time counts as its own): another program, as a browser is
    burn = f"{sys.executable} -c 'import time\nend = time.time() + 1.5\nwhile time.time() < end: pass' &"
    before = load_snapshot()
    subprocess.run(["sh", "-c", burn], check=True)
    time.sleep(1.6)
    load = machine_load(before, load_snapshot())
    assert load["other_cpu_share"] > 0.2, load
    sentence = busy_sentence(load)
    assert sentence and sentence.startswith("**Busy machine**: other processes used")


def test_a_quiet_machine_is_not_called_busy() -> None:
    assert busy_sentence({"other_cpu_share": 0.05, "cpus": 2}) is None
    assert busy_sentence({"cpus": 2}) is None  # no /proc: nothing is claimed


def test_a_utilisation_above_100_percent_is_no_percentage() -> None:
    row = Row("cnn", "eager", "cpu", "inference", 8, tflops=0.2)
    assert _valid_fraction(row, 0.42, "x") == 0.42 and not row.notes
    assert _valid_fraction(row, 2.19, "this machine's measured matmul rate") is None
    assert row.notes == [
        "achieved 0.2 TFLOP/s, 219% of this machine's measured matmul rate: that reference is invalid for this "
        "row, so no percentage is shown"
    ]


def test_unknown_gpus_have_no_datasheet_peak() -> None:
    from perfkit.bench.utilization import peak_tflops

    assert peak_tflops("NVIDIA H200", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA GeForce RTX 9090", "bf16") is None
    row = Row("cnn", "eager", "cuda", "inference", 8, tflops=10.0, mfu=None, mfu_measured=0.5, precision="bf16",
              latency_ms_median=1.0, throughput=8000.0)  # fmt: skip
    assert "| 10 | no datasheet peak | 50.0% |" in BenchmarkReport({}, rows=[row]).to_markdown()
