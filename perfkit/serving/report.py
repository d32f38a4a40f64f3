"""The serving report: one row per candidate (cold start, peak memory, latency percentiles,
throughput, size, accuracy); serve.json first, then serve.md and serve.png."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perfkit.reporting import markdown_table, pyplot
from perfkit.run import write_json


@dataclass
class ServeRow:
    name: str
    kind: str
    size_bytes: int | None
    accuracy: float | None
    cold_start_s: float | None = None
    cold_start_breakdown: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    torch_imported: bool | None = None  # whether the serving process needed torch
    peak_cuda_mb: float | None = None  # the serving process's peak CUDA memory (torch kinds on a GPU)
    provider: str | None = None  # the ONNX Runtime execution provider the serving process got
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    throughput_per_s: float | None = None
    # at the throughput batch, against the first candidate: median of per-round ratios (p10-p90)
    speedup: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    loaded_latency_ms_p50: float | None = None
    loaded_latency_ms_p99: float | None = None
    loaded_throughput_per_s: float | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the candidate was made (e.g. int8's backend choice)


@dataclass
class ServeReport:
    rows: list[ServeRow]
    settings: dict[str, Any]
    environment: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeReport:
        """A report read back from ``serve.json`` (re-rendered, or compared with a later one)."""
        known = {f.name for f in dataclasses.fields(ServeRow)}
        rows = [ServeRow(**{k: v for k, v in row.items() if k in known}) for row in data["rows"]]
        return cls(rows, data["settings"], data["environment"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "environment": self.environment,
            "rows": [asdict(r) for r in self.rows],
        }

    def to_markdown(self) -> str:
        s = self.settings
        env = self.environment
        lines = [
            "# Serving benchmark",
            "",
            f"On {s.get('device', 'cpu')}{' (' + env['gpu'] + ')' if env.get('gpu') and 'cuda' in s.get('device', '') else ''}; "
            f"{env.get('cpu_model')} ({', '.join(env.get('cpu_simd', [])) or 'no AVX2'}), {s['threads']} thread(s); "
            f"batch-1 latency over {s['latency_calls']} calls per candidate, interleaved call by call; "
            f"throughput at batch {s['batch_size']} ({s['rounds']} interleaved rounds; speed-up: the first "
            "candidate's time over each one's, median of per-round ratios (p10-p90)); cold start: a fresh "
            "process imports its runtime, loads the model and answers one batch-1 call (median of "
            f"{s['cold_starts']}); peak memory: that process's peak resident set.",
        ]
        if s.get("concurrency"):
            lines[-1] += (
                f" Under load: {s['concurrency']} threads calling batch-1 at once, one candidate at a time."
            )
        lines += ["", _table(self.rows, bool(s.get("concurrency")))]
        for row in self.rows:
            lines += [f"- {row.name}: {error}" for error in row.errors]
        lines += [f"- {row.name}: {note}" for row in self.rows for note in row.notes]
        lines += [f"- {name}: not measured ({why})" for name, why in s.get("skipped", {}).items()]
        lines += [f"- {name}: {why}" for name, why in s.get("export_errors", {}).items()]
        return "\n".join(lines)

    def save(self, directory: str | Path) -> list[Path]:
        """serve.json, serve.md and serve.png (batch-1 p50 latency against accuracy) in ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "serve.json", self.to_dict())
        (directory / "serve.md").write_text(self.to_markdown() + "\n")
        written = [directory / "serve.json", directory / "serve.md"]
        plot = self.plot(directory / "serve.png")
        return written + ([plot] if plot else [])

    def plot(self, path: Path) -> Path | None:
        """Left: batch-1 p50 latency against accuracy (numbered points, named in the legend); right:
        throughput speed-up at the batch, fastest first."""
        points = [r for r in self.rows if r.latency_ms_p50 is not None]
        if not points:
            return None

        plt = pyplot()
        figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.1, 1]})
        with_accuracy = all(r.accuracy is not None for r in points)
        colors = plt.get_cmap("tab20")
        for number, r in enumerate(points, 1):
            y = r.accuracy if with_accuracy else r.throughput_per_s
            left.scatter(r.latency_ms_p50, y, color=colors(number % 20), label=f"{number}: {r.name}")
            left.annotate(
                str(number), (r.latency_ms_p50, y), textcoords="offset points", xytext=(3, 3), fontsize=8
            )
        left.set_xscale("log")
        left.set_xlabel("batch-1 latency p50 (ms, log scale; left is faster)")
        left.set_ylabel(
            "held-out accuracy"
            if with_accuracy
            else f"throughput at batch {self.settings['batch_size']} (/s)"
        )
        left.legend(fontsize=7, loc="best")
        left.grid(alpha=0.3)
        ranked = sorted((r for r in points if r.speedup is not None), key=lambda r: r.speedup or 0.0)
        right.barh([r.name for r in ranked], [r.speedup for r in ranked], color="tab:blue")
        right.axvline(1.0, color="grey", linewidth=0.8)
        right.set_xlabel(
            f"speed-up over {points[0].name} at batch {self.settings['batch_size']} (median of rounds)"
        )
        right.tick_params(axis="y", labelsize=8)
        right.grid(alpha=0.3, axis="x")
        model = f" ({self.settings['model']})" if self.settings.get("model") else ""
        figure.suptitle(f"Serving candidates{model}: latency, accuracy and throughput")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path


def _served_in(row: ServeRow) -> float:
    """Cold start less the interpreter and imports: loading the model and its first call."""
    return row.cold_start_breakdown.get("load_s", 0.0) + row.cold_start_breakdown.get("first_call_s", 0.0)


def _table(rows: list[ServeRow], loaded: bool) -> str:
    header = [
        "candidate",
        "accuracy",
        "speed-up at the batch",
        "cold start (of it: load + first call)",
        "peak memory",
        "batch-1 p50 / p90 / p99",
        "throughput",
        "size",
    ]
    if loaded:
        header += ["under load p50 / p99", "under load throughput"]
    table = []
    for r in rows:
        cells = [
            r.name,
            "-" if r.accuracy is None else f"{r.accuracy:.4f}",
            "-" if r.speedup is None else f"{r.speedup:.2f}x ({r.speedup_p10:.2f}-{r.speedup_p90:.2f})",
            "-" if r.cold_start_s is None else f"{r.cold_start_s:.2f} s ({_served_in(r):.2f} s)",
            "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f} MB",
            "-"
            if r.latency_ms_p50 is None
            else f"{r.latency_ms_p50:.3f} / {r.latency_ms_p90:.3f} / {r.latency_ms_p99:.3f} ms",
            "-" if r.throughput_per_s is None else f"{r.throughput_per_s:,.0f}/s",
            "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.2f} MB",
        ]
        if loaded:
            cells += [
                "-"
                if r.loaded_latency_ms_p50 is None
                else f"{r.loaded_latency_ms_p50:.3f} / {r.loaded_latency_ms_p99:.3f} ms",
                "-" if r.loaded_throughput_per_s is None else f"{r.loaded_throughput_per_s:,.0f}/s",
            ]
        table.append(cells)
    return "\n".join(markdown_table(header, table))
