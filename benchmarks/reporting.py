"""Benchmark results as data first: one JSON file, then a Markdown table and a PNG plot made from it.

Files are named ``<benchmark>-<device>.{json,md,png}`` under benchmarks/results/, where device is
``cpu`` or ``cuda``; the JSON and the Markdown name the machine (CPU model, cores, GPU, torch).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from perfkit.bench.report import machine_line
from perfkit.measure import busy_sentence, load_snapshot, machine_load
from perfkit.run import write_json
from perfkit.system import environment

RESULTS_DIR = Path(os.environ.get("PERFKIT_BENCH_RESULTS", Path(__file__).parent / "results"))
# a benchmark imports this module before it measures: how busy the machine was is taken from here on
_STARTED = load_snapshot()


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median with the 10th-90th percentile range (over rounds), the form every table reports."""
    ordered = sorted(values)
    if len(ordered) > 1:
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        low, high = deciles[0], deciles[-1]
    else:
        low = high = ordered[0]
    return {"median": statistics.median(ordered), "p10": low, "p90": high, "n": len(ordered)}


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Per-round ratios of two interleaved variants, summarised with :func:`spread`."""
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def fmt(summary: dict[str, float], digits: int = 0, unit: str = "") -> str:
    """``median (p10-p90)`` for a table cell."""
    return f"{summary['median']:.{digits}f}{unit} ({summary['p10']:.{digits}f}-{summary['p90']:.{digits}f})"


def device_tag() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def write_report(
    name: str,
    data: dict[str, Any],
    *,
    title: str,
    description: Iterable[str],
    table: Sequence[Sequence[Any]],
    notes: Iterable[str] = (),
    figure: Any = None,
) -> Path:
    """Write ``name-<device>.json`` (``data`` plus the environment), ``.md`` (``table``: header row
    first) and, when given a matplotlib ``figure``, ``.png``. Returns the JSON path."""
    stem = RESULTS_DIR / f"{name}-{device_tag()}"
    env = {**environment(), "load": machine_load(_STARTED, load_snapshot())}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), {"environment": env, **data})
    header, *rows = table
    busy = busy_sentence(env["load"])
    lines = [f"# {title}", "", machine_line(env), "", *([busy, ""] if busy else []), *description, ""]
    lines += ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    notes = list(notes)
    if notes:
        lines += ["", *notes]
    if figure is not None:
        figure.savefig(stem.with_suffix(".png"), dpi=120, bbox_inches="tight")
        lines += ["", f"![{title}]({stem.with_suffix('.png').name})"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".json")


def new_figure(width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    """A matplotlib figure and axes drawn off-screen (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height))
    axes.grid(True, alpha=0.3)
    return figure, axes
