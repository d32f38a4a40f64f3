"""The benchmark report: data first (JSON), then Markdown tables and PNG plots drawn from that data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from perfkit.bench.catalog import REGISTRY as VARIANT_CATALOG
from perfkit.bench.plots import plot_report
from perfkit.bench.rows import Key, Row, check_row_types, ordered
from perfkit.measure import busy_sentence
from perfkit.reporting import markdown_table
from perfkit.run import write_json

_COLUMNS = [
    "model",
    "variant",
    "latency ms",
    "samples/s",
    "speed-up",
    "TFLOP/s",
    "% of datasheet peak",
    "% of measured matmul rate",
    "peak memory",
    "size",
    "parameters",
    "test acc",
]


@dataclass
class BenchmarkReport:
    """Rows plus the environment and configuration they were measured with.

    ``complete`` is False while a run is in progress or after it was interrupted: the rows present
    are finished measurements, the missing ones were never taken.
    """

    environment: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    complete: bool = True

    def row(
        self,
        model: str,
        variant: str,
        device: str = "cpu",
        mode: str = "inference",
        batch_size: int | None = None,
    ) -> Row:
        """The row of one measurement; ``batch_size`` may be left out when only one was measured."""
        matches = [
            r
            for r in self.rows
            if (r.model, r.variant, r.device, r.mode) == (model, variant, device, mode)
            and batch_size in (None, r.batch_size)
        ]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows match {model}/{variant}/{device}/{mode}/batch {batch_size}")
        return matches[0]

    # --- data ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "environment": self.environment,
            "config": self.config,
            "rows": [_finite(asdict(r)) for r in self.rows],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; also written (atomically) to ``path`` when given."""
        data = self.to_dict()
        if path is not None:
            write_json(Path(path), data)
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkReport:
        """Rows checked field by field: a report edited by hand or by another tool fails here, in one
        line, not in the arithmetic of a comparison (TypeError)."""
        names = {f.name for f in fields(Row)}
        rows = []
        for index, row in enumerate(data["rows"]):
            if not isinstance(row, dict):
                raise TypeError(f"rows[{index}] is {type(row).__name__}, not an object")
            values = {k: v for k, v in row.items() if k in names}
            check_row_types(index, values)
            rows.append(Row(**values))
        seen: dict[Key, int] = {}
        for index, parsed in enumerate(rows):
            if parsed.key in seen:
                raise TypeError(
                    f"rows[{seen[parsed.key]}] and rows[{index}] are both {'/'.join(map(str, parsed.key))}: "
                    "a report holds one row per measurement"
                )
            seen[parsed.key] = index
        return cls(
            data.get("environment", {}), data.get("config", {}), rows, bool(data.get("complete", True))
        )

    @classmethod
    def from_json(cls, path: str | Path) -> BenchmarkReport:
        """Read a report written by :meth:`to_json`; ValueError (one line) when it is not one."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a JSON benchmark report ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError(f"{path}: not a perfkit benchmark report (no 'rows' list)")
        try:
            return cls.from_dict(data)
        except TypeError as error:
            raise ValueError(f"{path}: a row is not a benchmark row ({error})") from None

    def save(self, directory: str | Path, *, plots: bool = True) -> list[Path]:
        """Write report.json, report.md and (with ``plots``) the PNGs into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json(directory / "report.json")
        markdown = directory / "report.md"
        markdown.write_text(self.to_markdown() + "\n")
        written = [directory / "report.json", markdown]
        if plots:
            written += self.plot(directory)
        return written

    # --- tables -------------------------------------------------------------------------------

    def sections(self) -> Iterator[tuple[tuple[str, str, int], list[Row]]]:
        """Measured rows grouped by (device, mode, batch size), in the order they were measured."""
        groups: dict[tuple[str, str, int], list[Row]] = {}
        for r in self.rows:
            if r.ok:
                groups.setdefault((r.device, r.mode, r.batch_size), []).append(r)
        yield from groups.items()

    def to_markdown(self) -> str:
        lines = ["# perfkit benchmark report", "", *self._caveats()]
        timing = self.config.get("timing", {})
        if timing:
            lines += [
                f"{timing.get('rounds')} interleaved rounds after {timing.get('warmup')} warm-up calls per "
                f"variant, {timing.get('threads')} thread(s). Latency: median (p10-p90). Speed-up: "
                "baseline / variant, median of per-round ratios [95% confidence interval]. Peak memory: "
                "allocated by one call beyond the weights.",
                "",
            ]
        for (device, mode, batch), rows in self.sections():
            lines += [f"## {mode}, {device}, batch {batch}", ""]
            lines += [*markdown_table(_COLUMNS, (_table_row(r) for r in rows)), ""]
        served = self.config.get("serve")
        if served:
            links = ", ".join(
                f"[{model}]({path})" if path.endswith(".md") else f"{model}: {path}"
                for model, path in served.items()
            )
            lines += [f"Serving candidates (bench.modes=[serve], CPU): {links}.", ""]
        lines += self._not_measured()
        rates = self.config.get("matmul_tflops")
        if rates:
            lines += [
                "MFU: the time the model FLOPs of a step (torch.utils.flop_counter) take at a reference rate, "
                "over the step's latency. Two references: the datasheet's dense peak (known GPUs only), and this "
                "machine's measured large-matmul rate, the best of its measurements during the run ("
                + ", ".join(f"{key}: {value:.3g} TFLOP/s" for key, value in rates.items())
                + "). A row faster than its reference shows no percentage: the reference, not the row, is "
                "wrong (see the notes). Each FLOP counts at the peak of the precision it runs in: on CUDA, a float32 row's "
                "convolutions run in TF32 (cuDNN's default, `torch.backends.cudnn.allow_tf32`), so the "
                "precision shown is that of most of its FLOPs.",
                "",
            ]
        present = [v for v in ordered(r.variant for r in self.rows) if v in VARIANT_CATALOG]
        if present:
            lines += ["## Variants", "", *(f"- `{v}`: {VARIANT_CATALOG[v].description}" for v in present), ""]
        notes = sorted({f"{r.model}/{r.variant}: {n}" for r in self.rows for n in r.notes})
        if notes:
            lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
        return "\n".join(lines).rstrip()

    def _not_measured(self) -> list[str]:
        """Rows not measured for the same reason share a line (a missing GPU skips a whole device)."""
        others: dict[tuple[str, str, str], list[Row]] = {}
        for r in self.rows:
            if not r.ok:
                others.setdefault((r.device, r.status, r.reason or ""), []).append(r)
        if not others:
            return []
        everything = ordered(r.variant for r in self.rows)
        rows = ([d, s, why, _describe_rows(found, everything)] for (d, s, why), found in others.items())
        return ["## Not measured", "", *markdown_table(["device", "status", "reason", "rows"], rows), ""]

    def _caveats(self) -> list[str]:
        """The machine, and what a reader must know before trusting a figure: an incomplete run, a
        busy machine, noisy cells."""
        lines = [machine_line(self.environment), ""] if self.environment else []
        if not self.complete:
            lines += [
                "**Incomplete**: the run is in progress or was stopped; these rows are the finished ones.",
                "",
            ]
        busy = busy_sentence(self.environment.get("load"))
        if busy:
            lines += [busy, ""]
        if any(r.noisy for r in self.rows):
            lines += [
                "Cells marked *noisy* varied by more than a tenth of their median (IQR / median) even when "
                "measured again with twice the rounds: their speed-ups are no verdict, and the regression "
                "gate does not judge them.",
                "",
            ]
        return lines

    def __str__(self) -> str:
        return self.to_markdown()

    def plot(self, directory: str | Path) -> list[Path]:
        """latency.png, accuracy_vs_latency.png and size_vs_latency.png (those with data to show)."""
        return plot_report(self.rows, list(self.sections()), Path(directory))


def _table_row(r: Row) -> list[str]:
    latency = f"{_ms(r.latency_ms_median)} ({_ms(r.latency_ms_p10)}-{_ms(r.latency_ms_p90)})"
    if r.variant == r.baseline:
        speed = "1 (baseline)"
    elif r.speedup is None:
        speed = "n/a"
    else:
        speed = f"{r.speedup:.2f}x [{_num(r.speedup_ci_low)}-{_num(r.speedup_ci_high)}]"
    if r.noisy:
        speed += f" *noisy* (IQR {r.dispersion:.0%} of median)" if r.dispersion is not None else " *noisy*"
    memory = "n/a" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:.1f} MiB"
    size = "n/a" if r.size_bytes is None else f"{r.size_bytes / 1e6:.2f} MB"
    parameters = "n/a" if r.parameters is None else f"{r.parameters:,}"
    accuracy = "n/a" if r.test_acc is None else f"{r.test_acc:.4f}"
    return [
        r.model,
        r.variant,
        latency,
        f"{r.throughput:,.0f}",
        speed,
        *_utilization(r),
        memory,
        size,
        parameters,
        accuracy,
    ]


def _utilization(r: Row) -> list[str]:
    """Three cells: achieved TFLOP/s, % of the datasheet's peak in the row's precision, % of this
    machine's measured matmul rate ("n/a" where there is no such reference)."""
    if r.tflops is None:
        return ["n/a", "n/a", "n/a"]
    peak = f"{_fraction(r.mfu)} ({r.precision})" if r.mfu is not None else "no datasheet peak"
    measured = _fraction(r.mfu_measured) if r.mfu_measured is not None else "n/a"
    return [f"{r.tflops:.3g}", peak, measured]


def _fraction(value: float) -> str:
    """A share of a reference rate; above 1 the reference is what is wrong (a report written by an
    older perfkit may hold one), so no percentage over 100 is printed."""
    return f"{value:.1%}" if value <= 1.0 else "reference invalid (exceeded)"


def _describe_rows(rows: list[Row], all_variants: list[str]) -> str:
    """'cnn: eager, compile (inference, train; batch 64)' per model."""
    parts = []
    for model in ordered(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        names = ordered(r.variant for r in mine)
        variants = "all variants" if len(all_variants) > 1 and names == all_variants else ", ".join(names)
        modes = ", ".join(ordered(r.mode for r in mine))
        batches = ", ".join(ordered(str(r.batch_size) for r in mine))
        parts.append(f"{model}: {variants} ({modes}; batch {batches})")
    return "; ".join(parts)


def _ms(value: float | None) -> str:
    """Three significant digits, without exponents: 0.894, 19.7, 142, 16,900."""
    if value is None:
        return "?"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _num(value: float | None) -> str:
    return "?" if value is None or math.isnan(value) else f"{value:.2f}"


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: an undefined number (a confidence interval from too few rounds) is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def machine_line(env: dict[str, Any]) -> str:
    """One sentence naming the machine and versions a result was measured with."""
    gpu = f", GPU: {env['gpu']}" if env.get("gpu") else ", no GPU"
    return (
        f"Machine: {env.get('cpu_model')}, {env.get('cpu_count')} cores{gpu}; {env.get('platform')}; "
        f"torch {env.get('torch')}, lightning {env.get('lightning')}; Python {env.get('python')}."
    )
