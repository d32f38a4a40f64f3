"""The step profile as Markdown: the breakdown table, the hint and the top operators."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfkit.reporting import DictReport, markdown_table

_CPU_LABELS = {
    "data": "waiting for data",
    "compute": "compute",
    "communication": "communication (not hidden by compute)",
    "other": "other (Python, framework, idle)",
}
# the TensorBoard profiler plugin's overview categories, in its order of priority
_ACCELERATOR_LABELS = {
    "kernel": "kernel (GPU computing)",
    "memcpy": "memcpy (copies, GPU not computing)",
    "memset": "memset",
    "communication": "communication (not hidden by GPU work)",
    "runtime": "runtime (CUDA API calls: launches, syncs; GPU idle)",
    "data": "waiting for data (GPU idle)",
    "cpu_exec": "CPU operators (GPU idle)",
    "other": "other (Python, framework; GPU idle)",
}


def breakdown_lines(breakdown: Mapping[str, Any], hint_line: str | None, scope: str) -> list[str]:
    """Markdown lines: the step time, a table of where it went, and the hint."""
    lines = [
        f"{breakdown['steps']} profiled steps on {breakdown['device']}, "
        f"{breakdown['step_ms']:.2f} ms per step ({scope}).",
        "",
    ]
    labels = _ACCELERATOR_LABELS if breakdown.get("device_busy") is not None else _CPU_LABELS
    shares = [(label, f"{breakdown[key]:.1%}") for key, label in labels.items()]
    if breakdown.get("device_busy") is not None:
        shares.append(
            ("**GPU utilisation** (kernels, copies or memsets running)", f"{breakdown['device_busy']:.1%}")
        )
    if breakdown.get("communication_total"):
        shares.append(("all communication, overlapped or not", f"{breakdown['communication_total']:.1%}"))
    lines += markdown_table(["where the step time went", "share"], shares, right=[1])
    return [
        *lines,
        "",
        f"**Hint:** {hint_line}" if hint_line else "No obvious bottleneck outside compute.",
        "",
    ]


def to_markdown(result: Mapping[str, Any]) -> str:
    """``profile.md``: the breakdown, the hint and the top operators."""
    lines = ["# Step profile", ""]
    breakdown = result.get("breakdown")
    if breakdown is None:
        lines += ["No profiled step completed: see the schedule below.", ""]
    else:
        lines += breakdown_lines(breakdown, result.get("hint"), f"mean over {result['world_size']} rank(s)")
    for kind, title in (("cpu", "self CPU time"), ("device", "self accelerator time")):
        operators = result.get("top_operators", {}).get(kind)
        if not operators:
            continue
        lines += [
            f"## Top operators by {title} (rank 0, per step)",
            "",
            *markdown_table(
                ["operator", "calls", "self CPU ms", "CPU total ms", "self device ms"],
                (
                    [
                        f"`{o['name'][:80]}`",
                        f"{o['calls_per_step']:g}",
                        f"{o['self_cpu_ms']:.3f}",
                        f"{o['cpu_total_ms']:.3f}",
                        f"{o['self_device_ms']:.3f}",
                    ]
                    for o in operators
                ),
                right=[1, 2, 3, 4],
            ),
        ]
        lines.append("")
    lines += [
        f"Traces: {len(result.get('trace_files', []))} file(s), {result.get('trace_mb', 0):.1f} MB in "
        f"`{result.get('trace_dir')}` (schedule {result.get('schedule')}).",
        "",
    ]
    return "\n".join(lines)


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """A few lines for the terminal at the end of a profiled run."""
    breakdown = result.get("breakdown")
    if breakdown is None:
        return ["profile: no profiled step completed (see the warning above)"]
    on_accelerator = breakdown.get("device_busy") is not None
    names = _ACCELERATOR_LABELS if on_accelerator else _CPU_LABELS
    shares = ", ".join(f"{name} {breakdown[name]:.0%}" for name in names if breakdown.get(name))
    busy = f"GPU busy {breakdown['device_busy']:.0%}; " if on_accelerator else ""
    lines = [f"profile: {breakdown['step_ms']:.1f} ms per step: {busy}{shares}"]
    operators = (
        result.get("top_operators", {}).get("device") or result.get("top_operators", {}).get("cpu") or []
    )
    if operators:
        top = ", ".join(
            f"{o['name']} {max(o['self_device_ms'], o['self_cpu_ms']):.2f} ms" for o in operators[:3]
        )
        lines.append(f"profile: top operators per step: {top}")
    if result.get("hint"):
        lines.append(f"profile: hint: {result['hint']}")
    lines.append(
        f"profile: traces in {result['trace_dir']} ({result['trace_mb']:.1f} MB): "
        "tensorboard --logdir <run dir>, or open a .pt.trace.json in ui.perfetto.dev"
    )
    return lines


class ProfileReport(DictReport):
    """The step profile (``profile.json``, ``profile.md``): the breakdown, the hint, the top
    operators and where the traces are."""

    name = "profile"

    def to_markdown(self) -> str:
        return to_markdown(self.data)
