"""What ``perfkit.tune`` writes: data first (``tune.json``), then ``tune.md``, ``tune.png`` and the
Hydra overlay ``configs/experiment/tuned.yaml`` that trains with the chosen settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit.reporting import markdown_table, pyplot
from perfkit.run import write_json
from perfkit.tune.candidates import train_config_keys
from perfkit.tune.selection import Outcome

# training keys that are perfkit.train config keys (inference choices are advice for serving)
_TRAIN_KEYS = train_config_keys()


@dataclass
class TuneResult:
    """Every candidate's outcome, the chosen settings, and the tuned-vs-default comparison."""

    outcomes: list[Outcome]
    chosen: dict[str, dict[str, Any]]  # mode -> config keys
    final: dict[str, Outcome]  # mode -> tuned vs default, measured side by side
    elapsed_s: float
    budget_s: float
    device: str
    environment: dict[str, Any] = field(default_factory=dict)
    max_accuracy_drop: float = 0.5  # points: what every recommendation was held to
    # the chosen training settings checked over a full perfkit.train run (the CLI does this)
    verification: dict[str, Any] | None = None
    interrupted: bool = False  # Ctrl-C: the choice rests on the candidates measured before it

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    def to_markdown(self) -> str:
        return to_markdown(self)

    def save(self, directory: Path) -> list[Path]:
        """``tune.json``, ``tune.md``, ``tune.png`` and the training overlay in ``directory``."""
        return write_outputs(self, Path(directory))


def to_data(result: TuneResult) -> dict[str, Any]:
    return {
        "device": result.device,
        "budget_s": result.budget_s,
        "max_accuracy_drop": result.max_accuracy_drop,
        "full_run_verification": result.verification,
        "elapsed_s": round(result.elapsed_s, 1),
        "interrupted": result.interrupted,
        "chosen": result.chosen,
        "tuned_vs_default": {mode: outcome.as_dict() for mode, outcome in result.final.items()},
        "candidates": [outcome.as_dict() for outcome in result.outcomes],
        "environment": result.environment,
    }


def train_command(run_dir: Path | str) -> str:
    """The command that trains with a tune run's overlay. A search-path entry, not ``--config-dir``, so
    that it combines with the user's own ``--config-dir``."""
    return f"python -m perfkit.train experiment=tuned 'hydra.searchpath=[file://{Path(run_dir).resolve()}/configs]'"


def tuned_overlay(result: TuneResult, run_dir: Path) -> str:
    """The Hydra experiment overlay: the chosen training settings as config keys."""
    lines = [
        "# @package _global_",
        "# Written by perfkit.tune: the settings measured faster on this machine (see tune.md). Use it with",
        f"#   {train_command(run_dir)} [your usual overrides]",
    ]
    train = result.chosen.get("train", {})
    final = result.final.get("train")
    if final is not None and final.speedup is not None:
        measure = (
            "time to the default's held-out accuracy" if final.time_to_accuracy_s else "training samples/s"
        )
        lines.append(f"# measured together against the defaults: {final.speedup:.2f}x ({measure})")
        if "optimizer.lr" in train:
            lines.append(
                "# the learning rate and warm-up below are the ones the tuner trained with and verified"
            )
    nested: dict[str, dict[str, Any]] = {}
    for key in _TRAIN_KEYS:
        if key in train:
            group, _, name = key.rpartition(".")
            nested.setdefault(group, {})[name] = train[key]
    if not nested:
        lines.append("# no training setting beat the defaults beyond the noise: nothing to change")
        lines.append("{}")
    for group, values in nested.items():
        if group:
            lines.append(f"{group}:")
            lines += [f"  {name}: {_yaml(value)}" for name, value in values.items()]
        else:
            lines += [f"{name}: {_yaml(value)}" for name, value in values.items()]
    inference = result.chosen.get("inference")
    if inference:
        lines.append(f"# for serving (perfkit.compile / perfkit.prune / perfkit.quantize): {inference}")
    return "\n".join(lines) + "\n"


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_markdown(result: TuneResult) -> str:
    lines = [
        "# perfkit.tune",
        "",
        f"Device {result.device}; {result.elapsed_s:.0f} s of a {result.budget_s:.0f} s budget.",
        "",
        *(
            [
                "**Interrupted (Ctrl-C)**: the settings below rest on the candidates measured before it; "
                "the chosen settings were not compared together against the defaults.",
                "",
            ]
            if result.interrupted
            else []
        ),
        *_verdict_lines(result),
        "",
        "Settings that change numerics are judged by the time to reach the default's held-out accuracy "
        "(steps to it x measured time per step), not by samples/s.",
        "",
        *markdown_table(
            [
                "mode",
                "axis",
                "candidate",
                "decision",
                "speed-up (95% CI)",
                "samples/s",
                "time to accuracy (baseline)",
                "monitored metric (baseline)",
                "why",
            ],
            (_candidate_row(outcome) for outcome in result.outcomes),
            right=[4, 5, 6, 7],
        ),
        "",
        "![speed-ups](tune.png)",
        "",
    ]
    return "\n".join(lines)


def _verdict_lines(result: TuneResult) -> list[str]:
    """Failed candidates first, then what was chosen per mode, and the full-run check's outcome."""
    lines = []
    for outcome in result.outcomes:
        if outcome.status == "failed":
            c = outcome.candidate
            lines.append(f"**{c.mode} candidate {c.axis}={c.name} FAILED:** {outcome.reason}.")
    for mode, outcome in result.final.items():
        verdict = outcome.reason or outcome.status
        lines.append(
            f"**{mode}, tuned vs default (side by side):** {verdict}; settings {outcome.candidate.settings}."
        )
    check = result.verification
    for mode, keys in result.chosen.items():
        if not keys:
            why = (
                "the faster settings failed the full-run check below"
                if mode == "train" and check and check.get("verified") and not check["kept"]
                else _why_defaults(result, mode)
            )
            lines.append(f"**{mode}:** the defaults stay: {why}.")
    if check and check.get("verified") and check.get("tuned_run_failed"):
        lines.append(
            f"**Full-run check (perfkit.train, whole job):** {check['tuned_run_failed']}: numerics-changing "
            "settings dropped."
        )
    elif check and check.get("verified"):
        verdict = "kept" if check["kept"] else "dropped: only settings that keep the numerics stay"
        drop = check["drop_points"]
        unit = "%" if check.get("mode") == "min" else " points"  # a loss: percent of the default's
        change = f"{drop:.2f}{unit} worse" if drop > 0 else f"{-drop:.2f}{unit} better"
        lines.append(
            f"**Full-run check (perfkit.train, whole job):** {check['metric']} {check['tuned']:.4f} tuned vs "
            f"{check['default']:.4f} default ({change}; tolerance {result.max_accuracy_drop:g}): "
            f"numerics-changing settings {verdict}."
        )
    elif check:
        lines.append(f"**Full-run check:** not done: {check['reason']}.")
    return lines


def _why_defaults(result: TuneResult, mode: str) -> str:
    outcomes = [o for o in result.outcomes if o.candidate.mode == mode]
    measured = [o for o in outcomes if o.status in ("accepted", "rejected")]
    failed = sum(o.status == "failed" for o in outcomes)
    if not measured:
        return f"no candidate could be measured ({failed} failed, {len(outcomes) - failed} skipped)"
    extra = f"; {failed} failed" if failed else ""
    return f"no candidate of the {len(measured)} measured was faster beyond the noise{extra}"


def _candidate_row(outcome: Outcome) -> list[str]:
    c = outcome.candidate
    speed = (
        f"{outcome.speedup:.2f}x ({outcome.ci_low:.2f}-{outcome.ci_high:.2f})"
        if outcome.speedup is not None and outcome.ci_low is not None and outcome.ci_high is not None
        else (f"{outcome.speedup:.2f}x" if outcome.speedup is not None else "")
    )
    rate = f"{outcome.samples_per_s:.0f}" if outcome.samples_per_s else ""
    accuracy = (
        f"{outcome.accuracy:.3f} ({outcome.baseline_accuracy:.3f})"
        if outcome.accuracy is not None and outcome.baseline_accuracy is not None
        else ""
    )
    to_accuracy = (
        f"{outcome.time_to_accuracy_s:.2f} s ({outcome.baseline_time_to_accuracy_s:.2f} s)"
        if outcome.time_to_accuracy_s is not None and outcome.baseline_time_to_accuracy_s is not None
        else ""
    )
    return [c.mode, c.axis, c.name, outcome.status, speed, rate, to_accuracy, accuracy, outcome.reason]


def plot(result: TuneResult, path: Path) -> Path | None:
    """Speed-up of every measured candidate with its 95% CI, coloured by the decision."""
    measured = [o for o in result.outcomes if o.speedup is not None and o.ci_low is not None]
    if not measured:
        return None
    plt = pyplot()

    colours = {"accepted": "tab:green", "rejected": "tab:red"}
    figure, axes = plt.subplots(figsize=(7, 0.4 * len(measured) + 1.5))
    labels = [f"{o.candidate.mode}: {o.candidate.axis}={o.candidate.name}" for o in measured]
    for index, outcome in enumerate(measured):
        speed = float(outcome.speedup or 0.0)
        low = speed - float(outcome.ci_low or speed)
        high = float(outcome.ci_high or speed) - speed
        axes.errorbar(
            speed,
            index,
            xerr=[[max(low, 0)], [max(high, 0)]],
            fmt="o",
            color=colours.get(outcome.status, "tab:gray"),
            capsize=3,
        )
    axes.axvline(1.0, color="k", linestyle="--", alpha=0.5)
    axes.set_yticks(range(len(measured)), labels)
    axes.set_xscale("log")
    axes.set_xlabel("speed-up vs default, per sample (95% CI); green: accepted, red: rejected")
    axes.grid(True, alpha=0.3)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def write_outputs(result: TuneResult, run_dir: Path) -> list[Path]:
    """``tune.json``, ``tune.md``, ``tune.png`` and ``configs/experiment/tuned.yaml`` in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    written = [run_dir / "tune.json", run_dir / "tune.md"]
    write_json(written[0], to_data(result))
    written[1].write_text(to_markdown(result))
    picture = plot(result, run_dir / "tune.png")
    if picture is not None:
        written.append(picture)
    overlay = run_dir / "configs" / "experiment" / "tuned.yaml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_text(tuned_overlay(result, run_dir))
    written.append(overlay)
    return written
