"""The benchmark report: data first (JSON), then Markdown tables and PNG plots drawn from that data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from perfkit.bench.catalog import REGISTRY as VARIANT_CATALOG
from perfkit.measure import busy_sentence
from perfkit.reporting import markdown_table
from perfkit.run import write_json

Key = tuple[str, str, str, str, int]  # model, variant, device, mode, batch size


@dataclass
class Row:
    """One variant of one model, timed on one device, in one mode, at one batch size."""

    model: str
    variant: str
    device: str
    mode: str  # inference: a forward pass; train: forward, backward and an SGD step
    batch_size: int
    status: str = "ok"  # ok, skipped (reason says why) or failed (reason is the error)
    reason: str | None = None
    rounds: int = 0
    latency_ms_median: float | None = None
    latency_ms_p10: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_iqr: float | None = None
    dispersion: float | None = None  # IQR / median of the latency samples
    noisy: bool = False  # dispersion above 0.1 even after re-measuring with more rounds: no verdict
    throughput: float | None = None  # samples per second at the median latency
    peak_memory_bytes: int | None = None  # above what was allocated before the call
    size_bytes: int | None = None  # torch.save(state_dict())
    parameters: int | None = None
    test_acc: float | None = None
    baseline: str | None = None
    speedup: float | None = None  # baseline latency / this latency, median of per-round ratios
    speedup_ci_low: float | None = None  # 95% confidence interval of that median
    speedup_ci_high: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    precision: str | None = None  # what most of the step's FLOPs run in: bf16, tf32, fp32
    tflops: float | None = None  # model FLOPs per step / median latency
    # the step's FLOPs at the datasheet's dense peak of the precision each runs in (known GPUs), over
    # the median latency
    mfu: float | None = None
    mfu_measured: float | None = None  # the same against this machine's measured large-matmul rates
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.model, self.variant, self.device, self.mode, self.batch_size)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_NUMBER_FIELDS = {f.name for f in fields(Row) if f.type in ("int", "float | None", "int | None")}
_TEXT_FIELDS = {f.name for f in fields(Row) if f.type in ("str", "str | None")}


def _check_row_types(index: int, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is None and name not in ("model", "variant", "device", "mode", "batch_size", "status"):
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if name in _NUMBER_FIELDS and number and not math.isfinite(value):
            raise TypeError(f"rows[{index}].{name}={value!r} is not finite")
        if (name in _NUMBER_FIELDS and not number) or (name in _TEXT_FIELDS and not isinstance(value, str)):
            kind = "a number" if name in _NUMBER_FIELDS else "text"
            raise TypeError(f"rows[{index}].{name}={value!r} is not {kind}")
        if name == "notes" and not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
            raise TypeError(f"rows[{index}].notes={value!r} is not a list of text")


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
            _check_row_types(index, values)
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
            lines += markdown_table(
                [
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
                ],
                (_table_row(r) for r in rows),
            )
            lines.append("")
        served = self.config.get("serve")
        if served:
            links = ", ".join(
                f"[{model}]({path})" if path.endswith(".md") else f"{model}: {path}"
                for model, path in served.items()
            )
            lines += [f"Serving candidates (bench.modes=[serve], CPU): {links}.", ""]
        # rows not measured for the same reason share a line (a missing GPU skips a whole device)
        others: dict[tuple[str, str, str], list[Row]] = {}
        for r in self.rows:
            if not r.ok:
                others.setdefault((r.device, r.status, r.reason or ""), []).append(r)
        everything = _ordered(r.variant for r in self.rows)
        if others:
            lines += ["## Not measured", ""]
            lines += markdown_table(
                ["device", "status", "reason", "rows"],
                (
                    [device, status, reason, _describe_rows(rows, everything)]
                    for (device, status, reason), rows in others.items()
                ),
            )
            lines.append("")
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
        present = [v for v in _ordered(r.variant for r in self.rows) if v in VARIANT_CATALOG]
        if present:
            lines += ["## Variants", "", *(f"- `{v}`: {VARIANT_CATALOG[v].description}" for v in present), ""]
        notes = sorted({f"{r.model}/{r.variant}: {n}" for r in self.rows for n in r.notes})
        if notes:
            lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
        return "\n".join(lines).rstrip()

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

    # --- plots --------------------------------------------------------------------------------

    def plot(self, directory: str | Path) -> list[Path]:
        """latency.png, accuracy_vs_latency.png and size_vs_latency.png (those with data to show)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        if any(True for _ in self.sections()):
            written.append(self._plot_latency(directory / "latency.png"))
        for name, column, label in (
            ("accuracy_vs_latency.png", "test_acc", "test accuracy"),
            ("size_vs_latency.png", "size_bytes", "serialized size (MB)"),
        ):
            path = self._plot_against_latency(directory / name, column, label)
            if path is not None:
                written.append(path)
        return written

    def _plot_latency(self, path: Path) -> Path:
        plt = _pyplot()
        sections = list(self.sections())
        variants = _ordered(r.variant for _, rows in sections for r in rows)
        colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
        figure, axes_list = plt.subplots(
            len(sections), 1, figsize=(8, 0.5 + 2.2 * len(sections)), squeeze=False
        )
        for axes, ((device, mode, batch), rows) in zip(axes_list[:, 0], sections, strict=True):
            models = _ordered(r.model for r in rows)
            height = 0.8 / len(variants)
            for index, variant in enumerate(variants):
                found = [(models.index(r.model), r) for r in rows if r.variant == variant]
                if not found:
                    continue
                positions = [m + (index - len(variants) / 2 + 0.5) * height for m, _ in found]
                medians = [r.latency_ms_median or 0.0 for _, r in found]
                spread = [
                    [(r.latency_ms_median or 0) - (r.latency_ms_p10 or 0) for _, r in found],
                    [(r.latency_ms_p90 or 0) - (r.latency_ms_median or 0) for _, r in found],
                ]
                axes.barh(
                    positions, medians, height, xerr=spread, color=colors[variant], label=variant, capsize=2
                )
            axes.set_yticks(range(len(models)), models)
            axes.invert_yaxis()
            _log_axis(axes, "x")
            axes.set_title(f"{mode}, {device}, batch {batch}", fontsize=10)
            axes.grid(True, axis="x", alpha=0.3)
        axes_list[-1, 0].set_xlabel("latency per call, ms (median, whiskers p10-p90; log scale)")
        handles, labels = axes_list[0, 0].get_legend_handles_labels()
        figure.legend(
            handles,
            labels,
            loc="upper center",
            ncol=min(4, len(labels)),
            fontsize=8,
            bbox_to_anchor=(0.5, 1.0),
        )
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (0.5 + 2.2 * len(sections))))
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path

    def _plot_against_latency(self, path: Path, column: str, label: str) -> Path | None:
        rows = [r for r in self.rows if r.ok and r.mode == "inference" and getattr(r, column) is not None]
        if not rows:
            return None
        # one panel per device, at its largest measured batch size
        panels: dict[str, int] = {}
        for r in rows:
            panels[r.device] = max(panels.get(r.device, 0), r.batch_size)
        plt = _pyplot()
        variants = _ordered(r.variant for r in rows)
        models = _ordered(r.model for r in rows)
        markers = "os^Dv<>p"
        figure, axes_list = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
        for axes, (device, batch) in zip(axes_list[0], panels.items(), strict=True):
            for r in rows:
                if (r.device, r.batch_size) != (device, batch):
                    continue
                value = getattr(r, column) / (1e6 if column == "size_bytes" else 1)
                axes.scatter(
                    r.latency_ms_median,
                    value,
                    color=plt.cm.tab10(variants.index(r.variant) % 10),
                    marker=markers[models.index(r.model) % len(markers)],
                    s=50,
                )
            _log_axis(axes, "x")
            if column == "size_bytes":
                _log_axis(axes, "y")
            axes.set_xlabel(f"inference latency, ms (batch {batch}, log scale)")
            axes.set_ylabel(label)
            axes.set_title(device, fontsize=10)
            axes.grid(True, alpha=0.3)
        handles = [
            plt.Line2D([], [], color=plt.cm.tab10(i % 10), marker="o", linestyle="", label=v)
            for i, v in enumerate(variants)
        ] + [
            plt.Line2D([], [], color="gray", marker=markers[i % len(markers)], linestyle="", label=m)
            for i, m in enumerate(models)
        ]
        axes_list[0, -1].legend(handles=handles, fontsize=8, loc="best")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path


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
    for model in _ordered(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        names = _ordered(r.variant for r in mine)
        variants = "all variants" if len(all_variants) > 1 and names == all_variants else ", ".join(names)
        modes = ", ".join(_ordered(r.mode for r in mine))
        batches = ", ".join(_ordered(str(r.batch_size) for r in mine))
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


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def machine_line(env: dict[str, Any]) -> str:
    """One sentence naming the machine and versions a result was measured with."""
    gpu = f", GPU: {env['gpu']}" if env.get("gpu") else ", no GPU"
    return (
        f"Machine: {env.get('cpu_model')}, {env.get('cpu_count')} cores{gpu}; {env.get('platform')}; "
        f"torch {env.get('torch')}, lightning {env.get('lightning')}; Python {env.get('python')}."
    )


def _log_axis(axes: Any, which: str) -> None:
    """Log scale labelled with plain numbers (0.5, 2, 10), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(axes, f"set_{which}scale")("log")
    axis = getattr(axes, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


def _pyplot() -> Any:
    """matplotlib drawing off-screen (servers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
