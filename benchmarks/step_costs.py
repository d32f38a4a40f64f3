"""What each of perfkit's per-step cuts buys: the cost of one call before and after, times the calls a
training step makes (counted in a real Lightning fit, not assumed).

    python -m benchmarks.step_costs           # results in benchmarks/results/step_costs-<device>.*

Each pair runs interleaved (before, after, before, after ...) with ``torch.utils.benchmark.Timer``;
medians and the 10th-90th percentile over rounds. The end-to-end effect is in ``train_parity``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

Call = Callable[[], Any]


@dataclass
class Cut:
    name: str
    before: Call
    after: Call
    per_step: float  # calls per training step
    counted: str  # how per_step was obtained


def _profiler_pair() -> tuple[Call, Call]:
    from lightning.pytorch.profilers import PassThroughProfiler

    from perfkit.overhead import QuietProfiler

    def enter(profiler: Any) -> Call:
        def call() -> None:
            with profiler.profile("[Callback]TrainingSpeed.on_train_batch_end"):
                pass

        return call

    return enter(PassThroughProfiler()), enter(QuietProfiler())


def _setattr_pair() -> tuple[Call, Call]:
    import lightning as L

    from perfkit.overhead import LeanHooks

    class Plain(L.LightningModule):
        pass

    class Lean(LeanHooks, L.LightningModule):
        pass

    plain, lean = Plain(), Lean()

    def before() -> None:
        plain._current_fx_name = "on_train_batch_end"

    def after() -> None:
        lean._current_fx_name = "on_train_batch_end"

    return before, after


def _metrics_pair() -> tuple[Call, Call]:
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    from perfkit.models import MLP, ImageClassifier

    accuracy = MulticlassAccuracy(10, average="micro", validate_args=False)
    mean_loss = MeanMetric(nan_strategy="disable")
    model = ImageClassifier(MLP, (1, 8, 8), 10)
    logits, labels, losses = torch.randn(64, 10), torch.randint(0, 10, (64,)), torch.rand(64)

    def before() -> None:  # perfkit's training step until now: two torchmetrics updates
        accuracy.update(logits.detach(), labels)
        mean_loss.update(losses.detach())

    def after() -> None:  # what ImageClassifier.training_step does now
        model._add_to_training_sums(logits, losses.sum(), labels)

    return before, after


def _gpu_probe_pair() -> tuple[Call, Call]:
    def probe(setting: str) -> Call:
        def call() -> None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = setting
            torch.accelerator.current_accelerator(check_available=True)

        return call

    return probe("1"), probe("0")


def _profiler_range_pair() -> tuple[Call, Call]:
    from perfkit.data.resident import _labelled

    def before() -> None:
        with torch.profiler.record_function("enumerate(DataLoader)#DeviceBatches.__next__"):
            pass

    def after() -> None:
        with _labelled():
            pass

    return before, after


def _divergence_pair() -> tuple[Call, Call]:
    loss, limit = torch.tensor(2.3), torch.tensor(2.3e6)
    state: dict[str, torch.Tensor] = {"flag": torch.tensor(False), "worst": loss.clone()}

    def before() -> None:  # the flag it kept until now
        flag = ~(loss.detach().abs() <= limit).all()
        state["flag"] = state["flag"] | flag

    def after() -> None:  # one running maximum
        state["worst"] = torch.maximum(state["worst"], loss.detach().abs())

    return before, after


@contextlib.contextmanager
def _nvml_setting_kept() -> Iterator[None]:
    saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved


def count_per_step(batches: int = 20) -> dict[str, float]:
    """Profiler contexts entered and hook names set per training step, in a real fit with perfkit's
    default callbacks (two checkpoints, summary, speed, divergence check, progress bar) on the digits
    MLP: the difference between fits of ``2 * batches`` and ``batches`` steps, over ``batches``, so the
    once-per-fit calls cancel."""
    one, two = _count_calls(batches), _count_calls(2 * batches)
    return {key: (two[key] - one[key]) / batches for key in one}


def _count_calls(batches: int) -> dict[str, int]:
    import tempfile

    import lightning as L
    from hydra.utils import instantiate

    from perfkit.callbacks import DivergenceCheck, TrainingSpeed, add_progress_bar
    from perfkit.config import compose_config, instantiate_all
    from perfkit.data import DigitsDataModule
    from perfkit.models import MLP, ImageClassifier
    from perfkit.overhead import QuietProfiler

    counts = {"profile": 0, "hook_name": 0}

    class CountingProfiler(QuietProfiler):
        def profile(self, action_name: str) -> Any:
            counts["profile"] += 1
            return super().profile(action_name)

    class Counting(ImageClassifier):
        def __setattr__(self, name: str, value: Any) -> None:
            counts["hook_name"] += name == "_current_fx_name"
            super().__setattr__(name, value)

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config("train", [f"paths.output_dir={run_dir}"])
        callbacks = [*instantiate_all(cfg.callbacks, instantiate), TrainingSpeed(), DivergenceCheck()]
        add_progress_bar(callbacks, enabled=True)
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            callbacks=callbacks,
            profiler=CountingProfiler(),
        )
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            trainer.fit(Counting(MLP, (1, 8, 8), 10), datamodule=DigitsDataModule(batch_size=16))
    return counts


def cuts(per_step: dict[str, float]) -> list[Cut]:
    counted = "counted in a fit with the default callbacks"
    return [
        Cut("no-op profiler context (QuietProfiler)", *_profiler_pair(), per_step["profile"], counted),
        Cut("hook name set on the module (LeanHooks)", *_setattr_pair(), per_step["hook_name"], counted),
        Cut("training accuracy and loss (sums, not torchmetrics)", *_metrics_pair(), 1, "one per step"),
        Cut("CUDA check in optimizer.step() without a GPU", *_gpu_probe_pair(), 1, "one per optimizer step"),
        Cut("profiler range per resident batch", *_profiler_range_pair(), 1, "one per batch"),
        Cut("divergence check", *_divergence_pair(), 1, "one per step"),
    ]


def measure(cut: Cut, rounds: int) -> dict[str, list[float]]:
    """Microseconds per call, ``rounds`` interleaved measurements of each side."""
    from torch.utils.benchmark import Timer

    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(rounds):
        for side in ("before", "after"):
            timer = Timer(stmt="call()", globals={"call": getattr(cut, side)})
            times[side].append(timer.blocked_autorange(min_run_time=0.05).median * 1e6)
    return times


def write(results: list[dict[str, Any]], rounds: int) -> Any:
    from benchmarks.reporting import new_figure, write_report

    rows: list[list[Any]] = [
        ["per-step cost", "before, us/call", "after, us/call", "calls per step", "saved, us/step"]
    ]
    for r in results:
        rows.append(
            [
                r["name"],
                f"{r['before_us']:.2f}",
                f"{r['after_us']:.2f}",
                f"{r['per_step']:.1f} ({r['counted']})",
                f"**{r['saved_us_per_step']:.0f}**",
            ]
        )
    total = sum(r["saved_us_per_step"] for r in results)
    figure, axes = new_figure(7.5, 0.6 + 0.45 * len(results))
    axes.barh([r["name"] for r in results], [r["saved_us_per_step"] for r in results], color="C0")
    axes.invert_yaxis()
    axes.set_xlabel("microseconds saved per training step (median)")
    return write_report(
        "step_costs",
        {"rounds": rounds, "cuts": results, "saved_us_per_step_total": total},
        title="What each per-step cut buys",
        description=[
            f"One call of each before and after the change, {rounds} interleaved rounds of "
            "`torch.utils.benchmark.Timer.blocked_autorange`, medians; calls per step counted in a "
            f"real fit where noted. In all: about {total:.0f} us saved per training step. The "
            "end-to-end effect on training is in `train_parity`.",
        ],
        table=rows,
        figure=figure,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.step_costs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    per_step = count_per_step()
    results = []
    with _nvml_setting_kept():
        for cut in tqdm(cuts(per_step), unit="cut", desc="step costs"):
            times = measure(cut, args.rounds)
            before, after = statistics.median(times["before"]), statistics.median(times["after"])
            results.append(
                {
                    "name": cut.name,
                    "before_us": before,
                    "after_us": after,
                    "before_us_rounds": times["before"],
                    "after_us_rounds": times["after"],
                    "per_step": cut.per_step,
                    "counted": cut.counted,
                    "saved_us_per_step": (before - after) * cut.per_step,
                }
            )
    print(f"report: {write(results, args.rounds)} (and .md, .png)")


if __name__ == "__main__":
    main()
