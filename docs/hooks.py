"""MkDocs hooks: publish the committed benchmark plots (so the README's image links work on the site
too) and generate the Results page from the reports under ``benchmarks/results/``, so that its
tables are the measured files themselves, never copies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "<!-- generated: results -->"

# the page's sections, in reading order: report files matched by glob, relative to RESULTS
SECTIONS = [
    ("Training speed against a hand-written loop", ["train_parity-*.md", "train_parity_*-*.md"]),
    ("Data loading and DDP", ["loader_throughput-*.md", "ddp_scaling-*.md", "ddp_overhead-*.md"]),
    ("Post-training optimizations", ["optim_targets-*.md"]),
    ("The variant benchmark (`perfkit.bench`)", ["bench-*/report.md"]),
    ("Profiling", ["profiler_overhead-*.md", "profile_per_model-*.md"]),
    ("Tuning (`perfkit.tune`)", ["tune-*.md", "tune-*/tune.md"]),
]


def on_files(files: Files, config: Any) -> Files:
    for image in sorted(RESULTS.rglob("*.png")):
        files.append(
            File(
                str(image.relative_to(ROOT)),
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, results_markdown())


def results_markdown() -> str:
    """Every report under ``benchmarks/results/``, grouped by topic; each names its machine."""
    parts = [_default_job()]
    seen: set[Path] = set()
    for title, patterns in SECTIONS:
        reports = [p for pattern in patterns for p in sorted(RESULTS.glob(pattern)) if p not in seen]
        if not reports:
            continue
        parts.append(f"## {title}")
        for report in reports:
            seen.add(report)
            parts.append(_section(report))
    others = sorted(p for p in RESULTS.rglob("*.md") if p not in seen and p.name != "README.md")
    if others:
        parts += ["## Other results", *map(_section, others)]
    logs = sorted(RESULTS.glob("*.txt"))
    if logs:
        parts += ["## Test logs", "\n".join(f"- `benchmarks/results/{log.name}`" for log in logs)]
    return "\n\n".join(parts) + "\n"


def _section(report: Path) -> str:
    """A report's Markdown with its title one level down, history notes dropped from headings, and
    image links made relative to the site's copy of ``benchmarks/results``."""
    relative = report.relative_to(ROOT)
    lines = report.read_text().strip().splitlines()
    title = _plain_title(lines[0].lstrip("# ")) if lines and lines[0].startswith("# ") else report.stem
    body = "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines)
    body = re.sub(r"^(#{1,4}) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", body, flags=re.MULTILINE)
    folder = relative.parent.as_posix()
    body = re.sub(
        r"!\[([^\]]*)\]\(([^)/]+\.png)\)",
        lambda m: f"![{_plain_title(m.group(1))}]({folder}/{m.group(2)})",
        body,
    )
    if report.parent != RESULTS:  # a report directory: its plots too
        body += "".join(
            f"\n\n![{png.stem}]({folder}/{png.name})"
            for png in sorted(report.parent.glob("*.png"))
            if png.name not in body
        )
    return f"### {title}: `{relative.relative_to('benchmarks/results').as_posix()}`\n\n{body.strip()}"


def _plain_title(title: str) -> str:
    return re.sub(r"\s*\(issues? [^)]*\)", "", title).strip()


def _default_job() -> str:
    """The README's default job, from its pytest-benchmark record."""
    path = RESULTS / "train_job-cpu.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    bench = data["benchmarks"][0]
    stats, extra = bench["stats"], bench.get("extra_info", {})
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "unknown CPU")
    return (
        "## The default job\n\n"
        f"`python -m perfkit.train`, wall time from interpreter start to exit, {stats['rounds']} runs on "
        f"{cpu} ({extra.get('cpu_count', '?')} cores), from `benchmarks/results/train_job-cpu.json`.\n\n"
        "| median | min | max | val acc | test acc | train samples/s |\n|---|---|---|---|---|---|\n"
        f"| {stats['median']:.1f} s | {stats['min']:.1f} s | {stats['max']:.1f} s | "
        f"{extra.get('val_acc', float('nan')):.3f} | {extra.get('test_acc', float('nan')):.3f} | "
        f"{extra.get('train_samples_per_s', float('nan')):,.0f} |"
    )
