"""The benchmark report's plots, drawn from its data: latency per section, and accuracy and size
against latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfkit.bench.rows import Row, ordered
from perfkit.reporting import pyplot

Sections = list[tuple[tuple[str, str, int], list[Row]]]


def plot_report(rows: list[Row], sections: Sections, directory: Path) -> list[Path]:
    """latency.png, accuracy_vs_latency.png and size_vs_latency.png (those with data to show)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if sections:
        written.append(_plot_latency(sections, directory / "latency.png"))
    for name, column, label in (
        ("accuracy_vs_latency.png", "test_acc", "test accuracy"),
        ("size_vs_latency.png", "size_bytes", "serialized size (MB)"),
    ):
        path = _plot_against_latency(rows, directory / name, column, label)
        if path is not None:
            written.append(path)
    return written


def _plot_latency(sections: Sections, path: Path) -> Path:
    plt = pyplot()
    variants = ordered(r.variant for _, rows in sections for r in rows)
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    figure, axes_list = plt.subplots(len(sections), 1, figsize=(8, 0.5 + 2.2 * len(sections)), squeeze=False)
    for axes, ((device, mode, batch), rows) in zip(axes_list[:, 0], sections, strict=True):
        models = ordered(r.model for r in rows)
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


def _plot_against_latency(measured: list[Row], path: Path, column: str, label: str) -> Path | None:
    rows = [r for r in measured if r.ok and r.mode == "inference" and getattr(r, column) is not None]
    if not rows:
        return None
    # one panel per device, at its largest measured batch size
    panels: dict[str, int] = {}
    for r in rows:
        panels[r.device] = max(panels.get(r.device, 0), r.batch_size)
    plt = pyplot()
    variants = ordered(r.variant for r in rows)
    models = ordered(r.model for r in rows)
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


def _log_axis(axes: Any, which: str) -> None:
    """Log scale labelled with plain numbers (0.5, 2, 10), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(axes, f"set_{which}scale")("log")
    axis = getattr(axes, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
