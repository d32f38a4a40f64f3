"""Regression gate: compare two benchmark reports' speed-ups and fail when one fell beyond the noise.

    python -m perfkit.bench compare BASE/report.json NEW/report.json --max-regression 10

Speed-ups (baseline latency / variant latency, measured interleaved within each run) are compared,
not absolute latencies: a ratio survives a busier or slower machine, a millisecond figure does not.
A variant regresses when its speed-up dropped by more than ``--max-regression`` percent *and* the
new 95% confidence interval lies wholly below the old one, or when the new report lost it. A row
either report marks ``noisy`` is not judged: the gate says it could not decide.
Exit status: 0 none regressed, 1 some did, 2 bad input (a new report with no measured rows too).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from perfkit.bench.report import BenchmarkReport, Key, Row
from perfkit.reporting import markdown_table


@dataclass(frozen=True)
class Change:
    key: Key
    base: Row | None
    new: Row | None
    change_pct: float | None  # new speed-up relative to the base one, in percent
    verdict: str

    @property
    def regressed(self) -> bool:
        # a measurement the new run lost is a failure of the gate, not a pass
        return self.verdict in ("REGRESSED", "FAILED", "missing")


NOISY = "noisy: could not decide"


def compare(base: BenchmarkReport, new: BenchmarkReport, max_regression: float) -> list[Change]:
    """One change per measurement in either report, in the base report's order."""
    base_rows = {r.key: r for r in base.rows}
    new_rows = {r.key: r for r in new.rows}
    keys = list(dict.fromkeys([*base_rows, *new_rows]))
    return [_change(key, base_rows.get(key), new_rows.get(key), max_regression) for key in keys]


def _change(key: Key, base: Row | None, new: Row | None, max_regression: float) -> Change:
    if base is None or not base.ok:
        return Change(key, base, new, None, "new" if new is not None and new.ok else "not measured")
    if new is None:
        return Change(key, base, new, None, "missing")
    if not new.ok:
        return Change(key, base, new, None, "FAILED" if new.status == "failed" else "skipped")
    if base.speedup is None or new.speedup is None:
        return Change(key, base, new, None, "baseline (not gated)")
    change = 100 * (new.speedup / base.speedup - 1)
    if base.noisy or new.noisy:  # a verdict from a noisy cell would be a guess
        return Change(key, base, new, change, NOISY)
    base_low, base_high = _interval(base)
    new_low, new_high = _interval(new)
    if -change > max_regression:
        verdict = "REGRESSED" if new_high < base_low else "slower, within noise"
    elif change > max_regression and new_low > base_high:
        verdict = "improved"
    else:
        verdict = "ok"
    return Change(key, base, new, change, verdict)


def check_comparable(report: BenchmarkReport, path: str) -> list[str]:
    """ValueError (one line) for a report whose measured rows lack what the gate compares; the
    warnings a reader of the comparison should see (MFU above 100%: a broken reference)."""
    if not any(row.ok for row in report.rows):
        raise ValueError(f"{path} has no measured rows: nothing to compare")
    warnings = []
    for index, row in enumerate(report.rows):
        name = f"{path}: rows[{index}] ({'/'.join(map(str, row.key))})"
        if not row.ok:
            continue
        if row.speedup is None and (row.latency_ms_median is None or row.latency_ms_median <= 0):
            raise ValueError(
                f"{name} is measured but has neither a speed-up nor a positive latency_ms_median"
            )
        if row.speedup is not None and row.speedup <= 0:
            raise ValueError(f"{name} has speed-up {row.speedup}: a speed-up is a positive ratio")
        has_ci = row.speedup_ci_low is not None and row.speedup_ci_high is not None
        has_range = row.speedup_p10 is not None and row.speedup_p90 is not None
        if row.speedup is not None and not (has_ci or has_range):
            raise ValueError(
                f"{name} has a speed-up without its interval (speedup_ci_low/high or speedup_p10/p90): "
                "the gate cannot tell a change from noise"
            )
        for field, value in (("mfu", row.mfu), ("mfu_measured", row.mfu_measured)):
            if value is not None and value > 1:
                warnings.append(f"{name}: {field} {value:.0%} is above 100%: its reference rate is wrong")
    return warnings


def _interval(row: Row) -> tuple[float, float]:
    """The 95% confidence interval of the speed-up, or its p10-p90 range when too few rounds for one."""
    low, high = row.speedup_ci_low, row.speedup_ci_high
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        low, high = row.speedup_p10, row.speedup_p90
    assert low is not None and high is not None
    return low, high


def to_markdown(changes: list[Change], max_regression: float) -> str:
    lines = [
        f"Speed-up vs baseline [95% CI]; regression gate: more than {max_regression:g}% slower and beyond the noise.",
        "",
    ]
    rows = (
        [
            *c.key,
            _cell(c.base),
            _cell(c.new),
            "" if c.change_pct is None else f"{c.change_pct:+.1f}%",
            c.verdict,
        ]
        for c in changes
    )
    header = ["model", "variant", "device", "mode", "batch", "base", "new", "change", "verdict"]
    return "\n".join([*lines, *markdown_table(header, rows)])


def _cell(row: Row | None) -> str:
    if row is None:
        return "-"
    if not row.ok:
        return row.status
    if row.speedup is None:
        return f"{row.latency_ms_median:.3g} ms"
    low, high = _interval(row)
    return f"{row.speedup:.2f}x [{low:.2f}-{high:.2f}]"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perfkit.bench compare",
        description="Fail (exit 1) when a variant's speed-up regressed beyond the threshold and the noise.",
    )
    parser.add_argument("base", help="report.json of the reference run")
    parser.add_argument("new", help="report.json of the run to check")
    parser.add_argument(
        "--max-regression",
        type=float,
        default=10.0,
        metavar="PCT",
        help="allowed drop of a speed-up, percent",
    )
    args = parser.parse_args(argv)
    if not math.isfinite(args.max_regression) or args.max_regression < 0:
        parser.error(f"--max-regression must be a finite number of percent >= 0, got {args.max_regression}")
    try:
        base, new = BenchmarkReport.from_json(args.base), BenchmarkReport.from_json(args.new)
        notes = check_comparable(base, args.base) + check_comparable(new, args.new)
    except ValueError as error:
        print(f"perfkit.bench compare: error: {error}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"perfkit.bench compare: warning: {note}", file=sys.stderr)
    changes = compare(base, new, args.max_regression)
    print(to_markdown(changes, args.max_regression))
    regressed = [c for c in changes if c.regressed]
    if regressed:
        names = ", ".join("/".join(map(str, c.key)) for c in regressed)
        print(f"\n{len(regressed)} regression(s): {names}", file=sys.stderr)
        return 1
    undecided = [c for c in changes if c.verdict == NOISY]
    if undecided:
        names = ", ".join("/".join(map(str, c.key)) for c in undecided)
        print(f"\n{len(undecided)} measurement(s) too noisy to judge (IQR above 10% of the median): {names}")
    print(f"\nno regression beyond {args.max_regression:g}% and the noise ({len(changes)} measurements)")
    return 0
