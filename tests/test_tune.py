"""perfkit.tune: the selection rules with injected measurements, the outputs, and the real tuner."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import perfkit
from perfkit.config import ConfigError, compose_config
from perfkit.tune import Budget, Candidate, Outcome, TuneResult, decide, pick, run_within_budget
from perfkit.tune.report import train_command, tuned_overlay, write_outputs
from tests.helpers import FakeClock, run_failure


def _outcome(speedup: float, low: float, high: float, *, numerics: bool = False, accuracy: float | None = None,
             axis: str = "precision", name: str = "bf16-mixed") -> Outcome:  # fmt: skip
    candidate = Candidate("train", axis, name, {"precision": name}, changes_numerics=numerics)
    return Outcome(
        candidate,
        "measured",
        speedup=speedup,
        ci_low=low,
        ci_high=high,
        accuracy=accuracy,
        baseline_accuracy=0.95 if accuracy is not None else None,
    )


@pytest.mark.parametrize(
    ("outcome", "status", "reason"),
    [
        (_outcome(1.5, 1.3, 1.7), "accepted", "faster: 1.50x"),
        (_outcome(0.8, 0.7, 0.9), "rejected", "slower than the baseline"),
        (_outcome(1.03, 0.97, 1.10), "rejected", "no gain beyond the noise"),
        (_outcome(1.01, 1.0, 1.02), "rejected", "no gain beyond the noise"),  # CI touching 1 is no gain
        (
            _outcome(1.5, 1.3, 1.7, numerics=True, accuracy=0.94),
            "rejected",
            "drops 1.0 points (tolerance 0.5)",
        ),
        (_outcome(1.5, 1.3, 1.7, numerics=True, accuracy=0.947), "accepted", "faster"),
        (_outcome(1.5, 1.3, 1.7, numerics=True), "rejected", "accuracy could not be checked"),
        (_outcome(1.5, float("nan"), float("nan")), "rejected", "too few rounds"),
    ],
)
def test_decisions(outcome: Outcome, status: str, reason: str) -> None:
    decided = decide(outcome, max_accuracy_drop=0.5)
    assert decided.status == status
    assert reason in decided.reason


def test_pick_takes_the_fastest_accepted_per_axis() -> None:
    outcomes = [
        decide(_outcome(1.4, 1.2, 1.6, axis="compile", name="default"), 0.5),
        decide(_outcome(1.9, 1.7, 2.1, axis="compile", name="max-autotune"), 0.5),
        decide(
            _outcome(2.5, 0.9, 4.0, axis="compile", name="noisy"), 0.5
        ),  # fastest median, not beyond noise
        decide(_outcome(0.9, 0.8, 0.95, axis="precision", name="bf16-mixed"), 0.5),
    ]
    best = pick(outcomes)
    assert list(best) == [("train", "compile")]
    assert best[("train", "compile")].candidate.name == "max-autotune"


def test_budget_order_and_skips() -> None:
    clock = FakeClock()
    budget = Budget(100, reserve_s=10, clock=clock)
    candidates = [
        Candidate("train", "compile", "default", expected_gain=1.2, cost_s=40),
        Candidate("train", "batch_size", "128", expected_gain=1.3, cost_s=5),
        Candidate("train", "compile", "max-autotune", expected_gain=1.2, cost_s=40),
        Candidate("train", "precision", "bf16-mixed", expected_gain=1.2, cost_s=5),
    ]
    measured: list[str] = []

    def measure(candidate: Candidate) -> Outcome:
        measured.append(candidate.name)
        # compiling really takes 60 s: the second compile candidate must then be skipped
        clock.now += 60 if candidate.axis == "compile" else candidate.cost_s
        return _outcome(1.2, 1.1, 1.3, axis=candidate.axis, name=candidate.name)

    outcomes = run_within_budget(candidates, measure, budget, max_accuracy_drop=0.5)
    # best expected gain per second first: batch size, then precision, then one compile mode
    assert measured == ["128", "bf16-mixed", "default"]
    skipped = outcomes[-1]
    assert skipped.candidate.name == "max-autotune" and skipped.status == "skipped"
    assert "out of budget: needs about 60 s" in skipped.reason
    assert clock.now <= 100


def test_the_final_comparison_is_kept_within_the_budget() -> None:
    clock = FakeClock()
    budget = Budget(100, reserve_s=5, clock=clock)

    def measure(candidate: Candidate) -> Outcome:
        clock.now += candidate.cost_s
        return _outcome(1.5, 1.3, 1.7, axis=candidate.axis, name=candidate.name)

    outcomes = run_within_budget(
        [
            Candidate("train", "compile", "default", expected_gain=2.0, cost_s=40),
            Candidate("train", "batch_size", "128", expected_gain=1.1, cost_s=30),
        ],
        measure,
        budget,
        max_accuracy_drop=0.5,
    )
    # 40 s spent, and re-measuring the accepted compile setting at the end costs about 40 s more
    assert [o.status for o in outcomes] == ["accepted", "skipped"]
    assert "and 40 s for the final comparison" in outcomes[1].reason


def test_a_failing_candidate_does_not_stop_the_others() -> None:
    budget = Budget(100, clock=FakeClock())

    def measure(candidate: Candidate) -> Outcome:
        if candidate.name == "broken":
            raise RuntimeError("inductor exploded\nmore lines")
        return _outcome(1.2, 1.1, 1.3)

    outcomes = run_within_budget(
        [Candidate("train", "compile", "broken"), Candidate("train", "precision", "bf16-mixed")],
        measure,
        budget,
        max_accuracy_drop=0.5,
    )
    assert [(o.candidate.name, o.status) for o in outcomes] == [
        ("broken", "failed"),
        ("bf16-mixed", "accepted"),
    ]
    assert outcomes[0].reason == "RuntimeError: inductor exploded"


def _result(chosen: dict, final: dict | None = None) -> TuneResult:
    outcomes = [
        decide(_outcome(1.5, 1.3, 1.7), 0.5),
        decide(_outcome(0.9, 0.8, 0.95, axis="compile", name="default"), 0.5),
    ]
    return TuneResult(
        outcomes=outcomes, chosen=chosen, final=final or {}, elapsed_s=30, budget_s=60, device="cpu"
    )


def test_tuned_overlay_trains_with_the_chosen_settings(tmp_path: Path) -> None:
    chosen = {"train": {"precision": "bf16-mixed", "data.batch_size": 256, "data.num_workers": 2,
                        "optimize.compile": True, "optimize.compile_mode": "default"}}  # fmt: skip
    written = write_outputs(_result(chosen), tmp_path)
    assert {p.name for p in written} == {"tune.json", "tune.md", "tune.png", "tuned.yaml"}
    data = json.loads((tmp_path / "tune.json").read_text())
    assert [c["status"] for c in data["candidates"]] == ["accepted", "rejected"]
    assert "slower than the baseline" in (tmp_path / "tune.md").read_text()

    # what the printed command (train_command) composes
    cfg = compose_config(
        "train",
        [f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "experiment=tuned", "data.num_workers=0"],
    )
    assert cfg.precision == "bf16-mixed" and cfg.data.batch_size == 256
    assert cfg.optimize.compile is True and cfg.optimize.compile_mode == "default"
    assert cfg.data.num_workers == 0  # the user's own overrides still win


def test_nothing_faster_means_an_empty_overlay() -> None:
    text = tuned_overlay(_result({"train": {}}), Path("run"))
    assert "nothing to change" in text
    assert OmegaConf.create(text.split("\n", 1)[1]) == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.rounds=3", "at least 6 are needed"),
        ("tune.modes=[serve]", "allowed: train, inference"),
        ("+tune.budget=3", "tune: unknown option(s) budget; allowed: budget_s"),
        ("tune.budget_s=0", "must be > 0"),
    ],
)
def test_bad_tune_options_are_one_line(tmp_path: Path, override: str, message: str) -> None:
    from perfkit.tune.__main__ import run

    cfg = compose_config("tune", ["accelerator=cpu", override])
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(cfg)
    assert not (tmp_path / "run" / "tune.json").exists()


def test_perfkit_tune_is_callable_and_a_module() -> None:
    import perfkit.tune as module

    assert perfkit.tune is module and callable(perfkit.tune)


@pytest.mark.slow
def test_real_tuner_stays_within_its_budget(tmp_path: Path) -> None:
    """The tuner on a small model and real data, with a short budget."""
    from hydra.utils import instantiate

    cfg = compose_config("train", ["data=digits", "model=mlp", "accelerator=cpu"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, input_shape=datamodule.input_shape, num_classes=datamodule.num_classes)
    budget = 60.0
    result = perfkit.tune(
        model, datamodule, budget_s=budget, rounds=6, accuracy_steps=20, output_dir=tmp_path, progress=False
    )
    assert result.elapsed_s <= budget * 1.1
    statuses = {o.status for o in result.outcomes}
    assert statuses <= {"accepted", "rejected", "skipped", "failed"}
    assert not [o for o in result.outcomes if o.status == "failed"], [o.reason for o in result.outcomes]
    measured = [o for o in result.outcomes if o.speedup is not None and o.candidate.axis != "num_workers"]
    assert measured, "nothing was measured within the budget"
    for outcome in result.outcomes:
        if outcome.status == "accepted" and outcome.candidate.axis != "num_workers":
            assert outcome.ci_low is not None and outcome.ci_low > 1.0
    for mode, outcome in result.final.items():  # what was chosen was faster together, side by side
        assert outcome.status == "accepted", (mode, outcome.reason)
    assert (tmp_path / "configs" / "experiment" / "tuned.yaml").is_file()
    assert json.loads((tmp_path / "tune.json").read_text())["elapsed_s"] <= budget * 1.1


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cuda", {"default", "reduce-overhead", "max-autotune"}),
        ("cpu", {"default", "max-autotune-no-cudagraphs"}),
    ],
)
def test_cuda_graphs_are_a_measured_candidate_on_cuda_only(device: str, expected: set[str]) -> None:
    """reduce-overhead (CUDA graph replay) is chosen only when it measures faster, like every candidate."""
    from types import SimpleNamespace

    import torch

    from perfkit.models import MLP, ImageClassifier
    from perfkit.tune.tuner import Tuner, TuneSettings

    tuner = SimpleNamespace(
        device=torch.device(device),
        module=ImageClassifier(MLP, (1, 8, 8), 10),
        settings=TuneSettings(modes=["train", "inference"]),
        batch_size=64,
        datamodule=SimpleNamespace(batch_size=64),
    )
    tuner._larger_batch = lambda factor: Tuner._larger_batch(tuner, factor)  # type: ignore[arg-type]
    candidates = Tuner.candidates(tuner)  # type: ignore[arg-type]
    for mode in ("train", "inference"):
        assert {c.name for c in candidates if c.mode == mode and c.axis == "compile"} == expected


@pytest.mark.parametrize(
    ("optimizer", "factor", "rule", "lr"), [("adamw", 4, "square-root", 0.002), ("sgd", 4, "linear", 0.04)]
)
def test_a_larger_batch_comes_with_a_scaled_learning_rate_and_warm_up(
    optimizer: str, factor: int, rule: str, lr: float
) -> None:
    from functools import partial
    from types import SimpleNamespace

    import torch

    from perfkit.models import MLP, ImageClassifier
    from perfkit.tune.tuner import Tuner, TuneSettings

    factory = (
        partial(torch.optim.AdamW, lr=1e-3) if optimizer == "adamw" else partial(torch.optim.SGD, lr=0.01)
    )
    tuner = SimpleNamespace(
        module=ImageClassifier(MLP, (1, 8, 8), 10, optimizer=factory),
        settings=TuneSettings(accuracy_steps=60),
        batch_size=64,
    )
    settings, description = Tuner._larger_batch(tuner, factor)  # type: ignore[arg-type]
    assert settings == {"data.batch_size": 256, "optimizer.lr": pytest.approx(lr), "model.warmup_steps": 6}
    assert rule in description


def test_warm_up_ramps_the_learning_rate_per_step_then_holds_it() -> None:
    from functools import partial

    import torch

    from perfkit.models import MLP, ImageClassifier

    module = ImageClassifier(MLP, (1, 8, 8), 10, optimizer=partial(torch.optim.SGD, lr=0.1), warmup_steps=4)
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
    assert schedule["interval"] == "step"
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule["scheduler"].step()
    assert rates == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])


@pytest.mark.slow
def test_the_tuned_overlay_trains_the_default_job_to_the_same_accuracy(tmp_path: Path) -> None:
    """tune.max_accuracy_drop holds for a whole training run, not only for the tuner's short ones."""
    from tests.helpers import run_cli

    common = ["accelerator=cpu", "logger=none", "trainer.enable_progress_bar=false"]
    code, _, err = run_cli(
        *common,
        "tune.budget_s=150",
        "tune.modes=[train]",
        "hydra.run.dir=tune",
        module="perfkit.tune",
        cwd=tmp_path,
    )
    assert code == 0, run_failure(err)
    tuned = json.loads((tmp_path / "tune" / "tune.json").read_text())
    for outcome in tuned["candidates"]:  # a larger batch is judged by time to accuracy, with its lr
        if outcome["axis"] == "batch_size" and outcome["speedup"] is not None:
            assert outcome["time_to_accuracy_s"] is not None and "optimizer.lr" in outcome["settings"]
    code, _, err = run_cli(*common, "hydra.run.dir=default", cwd=tmp_path)
    assert code == 0, run_failure(err)
    printed = shlex.split(train_command(tmp_path / "tune"))
    assert printed[:3] == ["python", "-m", "perfkit.train"]
    code, _, err = run_cli(*printed[3:], *common, "hydra.run.dir=tuned", cwd=tmp_path)
    assert code == 0, run_failure(err)
    default = json.loads((tmp_path / "default" / "metrics.json").read_text())
    with_tuning = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    drop_points = 100 * (default["test"]["acc"] - with_tuning["test"]["acc"])
    # two runs scored on the same 500 test images differ by sampling noise alone: one standard error of
    # the difference (about 1.2 points at 96%) on top of the tuner's promise (bf16 on a BF16 host
    # dropped 3 images, 0.6 points)
    p, n = default["test"]["acc"], 500
    noise_points = 100 * (2 * p * (1 - p) / n) ** 0.5
    assert drop_points <= tuned["max_accuracy_drop"] + noise_points, (
        tuned["chosen"],
        default["test"],
        with_tuning["test"],
    )


@pytest.mark.parametrize("how", ["keyboard", "lightning"])
def test_ctrl_c_keeps_the_measured_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Ctrl-C in the third measurement (itself, or as the sys.exit(1) Lightning makes of it inside
    fit): tune.json keeps the two measured, says it was interrupted, and the Ctrl-C goes on."""
    from hydra.utils import instantiate

    from perfkit.errors import Interrupted
    from perfkit.tune.tuner import Tuner

    calls: list[str] = []

    def measure(self: Tuner, candidate: Candidate) -> Outcome:
        calls.append(candidate.name)
        if len(calls) == 3:
            if how == "keyboard":
                raise KeyboardInterrupt
            Interrupted.seen = True
            raise SystemExit(1)
        return Outcome(candidate, "measured", speedup=1.5, ci_low=1.3, ci_high=1.7, accuracy=0.9,
                       baseline_accuracy=0.9)  # fmt: skip

    monkeypatch.setattr(Tuner, "_measure", measure)
    monkeypatch.setattr(Interrupted, "seen", False)
    cfg = compose_config("train", ["data=digits", "model=mlp", "accelerator=cpu"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = instantiate(cfg.model, input_shape=datamodule.input_shape, num_classes=datamodule.num_classes)
    with pytest.raises(KeyboardInterrupt):
        perfkit.tune(model, datamodule, modes=["inference"], output_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["interrupted"] is True
    statuses = [c["status"] for c in saved["candidates"]]
    assert statuses[:2] == ["accepted", "accepted"] and len(statuses) == 3
    assert saved["candidates"][2]["reason"] == "interrupted (Ctrl-C) while measuring"
    assert "**Interrupted (Ctrl-C)**" in (tmp_path / "tune.md").read_text()
