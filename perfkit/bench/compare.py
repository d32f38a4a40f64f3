"""Regression gate: compare two benchmark reports' speed-ups and fail when one fell beyond the noise.

    python -m perfkit.bench compare BASE/report.json NEW/report.json --max-regression 10

Speed-ups (baseline latency / variant latency, measured interleaved within each run) are compared,
not absolute latencies: a ratio survives a busier or slower machine, a millisecond figure does not.
A variant regresses when its speed-up dropped by more than ``--max-regression`` percent *and* the
new 95% confidence interval lies wholly below the old one, or when the new report lost it.
Exit status: 0 none regressed, 1 some did, 2 bad input (a new report with no measured rows too).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from perfkit.bench.report import BenchmarkReport, Key, Row


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
    base_low, base_high = _interval(base)
    new_low, new_high = _interval(new)
    if -change > max_regression:
        verdict = "REGRESSED" if new_high < base_low else "slower, within noise"
    elif change > max_regression and new_low > base_high:
        verdict = "improved"
    else:
        verdict = "ok"
    return Change(key, base, new, change, verdict)


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
        "| model | variant | device | mode | batch | base | new | change | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in changes:
        model, variant, device, mode, batch = c.key
        change = "" if c.change_pct is None else f"{c.change_pct:+.1f}%"
        lines.append(
            f"| {model} | {variant} | {device} | {mode} | {batch} | {_cell(c.base)} | {_cell(c.new)} "
            f"| {change} | {c.verdict} |"
        )
    return "\n".join(lines)


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
    if args.max_regression < 0:
        parser.error(f"--max-regression must be >= 0, got {args.max_regression}")
    try:
        base, new = BenchmarkReport.from_json(args.base), BenchmarkReport.from_json(args.new)
    except ValueError as error:
        print(f"perfkit.bench compare: error: {error}", file=sys.stderr)
        return 2
    if not any(row.ok for row in new.rows):
        print(
            f"perfkit.bench compare: error: {args.new} has no measured rows: nothing to compare",
            file=sys.stderr,
        )
        return 2
    changes = compare(base, new, args.max_regression)
    print(to_markdown(changes, args.max_regression))
    regressed = [c for c in changes if c.regressed]
    if regressed:
        names = ", ".join("/".join(map(str, c.key)) for c in regressed)
        print(f"\n{len(regressed)} regression(s): {names}", file=sys.stderr)
        return 1
    print(f"\nno regression beyond {args.max_regression:g}% and the noise ({len(changes)} measurements)")
    return 0
