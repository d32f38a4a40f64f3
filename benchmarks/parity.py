"""Training parity: ``perfkit.train`` against the hand-written PyTorch loop a user would write.

    python -m benchmarks.parity                       # CPU: every job, results in benchmarks/results/
    python -m benchmarks.parity --device cuda         # the GPU half (scripts/bench_gpu.sh parity)
    python -m benchmarks.parity --jobs default --rounds 3

Each job is one of perfkit's own training configs. The plain loops read the same composed config and
so train the same network from the same initial weights (the same seed, consumed in the same order),
with the same optimizer, scheduler, batch size, precision and epochs, on the same data split:

- ``plain``: a ``DataLoader`` (shuffle; ``pin_memory`` + ``non_blocking`` on CUDA), the optimizer with
  torch's default implementation (``AdamW(params, lr=...)``; perfkit's configs ask for the fused one), ``zero_grad``,
  ``backward``, ``step``; validation each epoch; the best-validation weights evaluated on the test set.
- ``plain_resident``: the same loop with the whole training set kept on the device and shuffled
  batches drawn there by indexing (the fastest thing a user writes by hand for in-memory data).
- ``perfkit``: ``perfkit.train.train(cfg)`` with the job's defaults (progress bar, TensorBoard,
  checkpoints), in the same process.
- on CUDA also ``perfkit_cuda_graphs``: the same with ``optimize.compile=true
  optimize.compile_mode=reduce-overhead`` (``--defaults-only`` leaves it out); with ``--ablate``,
  perfkit with each of its per-step optimizations off. Such a variant that fails is left out, and
  the report names its error.

The variants run interleaved, in a rotating order, round by round. Throughput is samples per second
of the training epochs after the first (validation excluded, the device synchronised at each epoch
boundary), the same span :class:`perfkit.callbacks.TrainingSpeed` times; the ratio of each round is
paired, with a 95% confidence interval over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict
from torch import nn

from perfkit.measure import NOISY_DISPERSION

# job -> overrides; on a CPU the ResNet-18 job is cut to a few batches an epoch (a full epoch takes
# minutes on 2 cores), identically for every variant
JOBS: dict[str, list[str]] = {
    "default": [],
    "digits_mlp": ["experiment=digits_mlp"],
    "mnist_resnet18": ["experiment=mnist_resnet18"],
}
CPU_REDUCTIONS: dict[str, list[str]] = {
    "mnist_resnet18": [
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    ],
}
VARIANTS = ("plain", "plain_resident", "perfkit")
# perfkit with one of its per-step optimizations turned off (``--ablate``): what each one buys
ABLATIONS: dict[str, list[str]] = {
    "perfkit_no_resident": ["data.device_resident=false"],
    "perfkit_no_fused": ["optimizer.fused=false"],
}
# perfkit with an option a user can turn on, run beside the defaults on CUDA: the compiled forward and
# backward replayed as CUDA graphs, for launch-bound steps (on the H100 the default job's plain step
# took ~3 ms, and perfkit's default ran at 0.87x)
OPTIONS_ON_CUDA: dict[str, list[str]] = {
    "perfkit_cuda_graphs": ["optimize.compile=true", "optimize.compile_mode=reduce-overhead"],
}


@dataclass
class RunResult:
    """One training run of one variant."""

    epoch_times_s: list[float]
    epoch_samples: list[int]
    fit_s: float  # first training step to the end of the last validation
    val_acc: float
    test_acc: float
    steps: int

    @property
    def samples_per_s(self) -> float:
        steady = slice(1, None) if len(self.epoch_times_s) > 1 else slice(None)
        return sum(self.epoch_samples[steady]) / sum(self.epoch_times_s[steady])

    @property
    def step_ms(self) -> float:
        steady = slice(1, None) if len(self.epoch_times_s) > 1 else slice(None)
        steps_per_epoch = self.steps / len(self.epoch_times_s)
        return statistics.mean(self.epoch_times_s[steady]) / steps_per_epoch * 1e3


@dataclass
class JobResult:
    job: str
    overrides: list[str]
    batch_size: int
    epochs: int
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    # perfkit variants beyond the defaults: name -> their overrides, and those that failed -> the error
    perfkit_variants: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def compose(job: str, device: str, extra: list[str]) -> DictConfig:
    from perfkit.config import compose_config

    overrides = [*JOBS[job], f"accelerator={device}", *extra]
    if device == "cpu":
        overrides += CPU_REDUCTIONS.get(job, [])
    return compose_config("train", overrides)


# ---------------------------------------------------------------- the hand-written loops


def _build(cfg: DictConfig) -> tuple[Any, nn.Module]:
    """The datamodule and the bare network, consuming the seed exactly as ``perfkit.train`` does."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model.net)(tuple(datamodule.input_shape), datamodule.num_classes)
    datamodule.setup("fit")
    return datamodule, net


def _limit(value: Any) -> int | None:
    """``trainer.limit_*_batches`` as a batch count (None: all); fractions are not used by the jobs."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def plain_loop(cfg: DictConfig, device: torch.device, *, resident: bool) -> RunResult:
    """What a user writes by hand, on the data, network and settings of ``cfg``."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    datamodule, net = _build(cfg)
    net = net.to(device)
    cuda = device.type == "cuda"
    optimizer = instantiate(cfg.optimizer, fused=None)(net.parameters())  # as a user writes it
    scheduler = instantiate(cfg.scheduler)(optimizer) if cfg.get("scheduler") else None
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(cfg.precision))
    batch_size, eval_batch = cfg.data.batch_size, cfg.data.eval_batch_size or cfg.data.batch_size
    limit_train, limit_val = _limit(cfg.trainer.limit_train_batches), _limit(cfg.trainer.limit_val_batches)
    limit_test = _limit(cfg.trainer.limit_test_batches)

    def batches(dataset: Any, size: int, shuffle: bool, limit: int | None) -> Iterator[Any]:
        if resident:
            images, labels = _tensors(dataset, device)
            order = torch.randperm(len(labels), device=device) if shuffle else None
            for count, start in enumerate(range(0, len(labels), size)):
                if limit is not None and count >= limit:
                    return
                index = order[start : start + size] if order is not None else slice(start, start + size)
                yield images[index], labels[index]
            return
        loader = DataLoader(dataset, batch_size=size, shuffle=shuffle, pin_memory=cuda)
        for count, (x, y) in enumerate(loader):
            if limit is not None and count >= limit:
                return
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def autocast() -> Any:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    def accuracy(dataset: Any, limit: int | None) -> float:
        net.eval()
        correct = total = 0
        with torch.no_grad(), autocast():
            for x, y in batches(dataset, eval_batch, False, limit):
                correct += int((net(x).argmax(1) == y).sum())
                total += len(y)
        net.train()
        return correct / total

    epoch_times, epoch_samples, steps = [], [], 0
    best_acc, best_state = -1.0, None
    _sync(device)
    fit_start = time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        _sync(device)
        start, samples = time.perf_counter(), 0
        for x, y in batches(datamodule.train_set, batch_size, True, limit_train):
            with autocast():
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(y)
            steps += 1
        _sync(device)
        epoch_times.append(time.perf_counter() - start)
        epoch_samples.append(samples)
        if scheduler is not None:
            scheduler.step()
        val_acc = accuracy(datamodule.val_set, limit_val)
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(net.state_dict())
    fit_s = time.perf_counter() - fit_start
    if best_state is not None:
        net.load_state_dict(best_state)
    return RunResult(
        epoch_times, epoch_samples, fit_s, best_acc, accuracy(datamodule.test_set, limit_test), steps
    )


def _tensors(subset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of a ``Subset`` of a tensor dataset, gathered once onto ``device``."""
    index = torch.as_tensor(subset.indices)
    return subset.dataset.images[index].to(device), subset.dataset.labels[index].to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- perfkit


def perfkit_run(cfg: DictConfig, run_dir: Path) -> RunResult:
    """``perfkit.train`` as the job configures it, its console output swallowed."""
    from perfkit.train import train

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        metrics = train(cfg)
    return RunResult(
        epoch_times_s=metrics["epoch_times_s"],
        epoch_samples=metrics["train_samples_per_epoch"],
        fit_s=metrics["fit_time_s"],
        val_acc=metrics["val"]["acc"],
        test_acc=metrics["test"]["acc"],
        steps=metrics["optimizer_steps"],
    )


# ---------------------------------------------------------------- the interleaved run


def run_job(
    job: str,
    device: torch.device,
    *,
    rounds: int,
    extra: list[str],
    workdir: Path,
    perfkit_variants: dict[str, list[str]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> JobResult:
    """The interleaved rounds of one job: the hand-written loops, perfkit's defaults, and
    ``perfkit_variants`` (name -> overrides). A variant that fails its untimed run is left out and
    its error recorded, so the rest is still measured."""
    cfg = compose(job, device.type, extra)
    result = JobResult(job, [*JOBS[job], *extra], cfg.data.batch_size, cfg.trainer.max_epochs)
    result.perfkit_variants = dict(perfkit_variants or {})
    runners: dict[str, Callable[[int], RunResult]] = {
        "plain": lambda _: _as_a_user_script(plain_loop, cfg, device, resident=False),
        "plain_resident": lambda _: _as_a_user_script(plain_loop, cfg, device, resident=True),
        "perfkit": lambda index: perfkit_run(cfg, workdir / f"{job}-{index}"),
    }
    for name, overrides in (perfkit_variants or {}).items():
        try:
            variant = compose(job, device.type, [*extra, *overrides])
        except Exception as error:
            result.failed[name] = _first_line(error)
            continue
        runners[name] = lambda index, c=variant, n=name: perfkit_run(c, workdir / f"{job}-{n}-{index}")
    # one untimed run of each: caches, allocator, cuDNN autotuning, the first-import costs
    for position, name in enumerate(list(runners)):
        try:
            runners[name](-1 - position)
        except Exception as error:
            if name in VARIANTS:
                raise
            result.failed[name] = _first_line(error)
            del runners[name]
    names = list(runners)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            result.runs.setdefault(name, []).append(runners[name](index))
        progress(f"{job}: round {index + 1}/{rounds}")
    return result


def _first_line(error: BaseException) -> str:
    from perfkit.errors import first_line

    return f"{type(error).__name__}: {first_line(error)}"


def _as_a_user_script(loop: Callable[..., RunResult], *args: Any, **kwargs: Any) -> RunResult:
    """The hand-written loop without what importing Lightning changed in this process (its NVML-based
    CUDA check, ~85 us per optimizer step on a CPU machine with a CUDA build of torch)."""
    from perfkit.overhead import without_lightning_gpu_probe

    with without_lightning_gpu_probe():
        return loop(*args, **kwargs)


def summarise(result: JobResult) -> dict[str, Any]:
    from perfkit.measure import ratio_confidence_interval

    def rates(name: str) -> list[float]:
        return [run.samples_per_s for run in result.runs[name]]

    summary: dict[str, Any] = {"job": result.job, "overrides": result.overrides}
    summary["batch_size"], summary["epochs"] = result.batch_size, result.epochs
    for name, runs in result.runs.items():
        summary[name] = {
            "samples_per_s": statistics.median(rates(name)),
            "samples_per_s_rounds": [round(r, 1) for r in rates(name)],
            "step_ms": statistics.median(run.step_ms for run in runs),
            "fit_s": statistics.median(run.fit_s for run in runs),
            "val_acc": statistics.median(run.val_acc for run in runs),
            "test_acc": statistics.median(run.test_acc for run in runs),
        }
    for name in (n for n in result.runs if n not in VARIANTS):
        ratios = [a / p for a, p in zip(rates(name), rates("plain"), strict=True)]
        summary[name]["vs_plain"] = {
            "ratio": statistics.median(ratios),
            "ci95": list(ratio_confidence_interval(ratios)),
        }
    for baseline in ("plain", "plain_resident"):
        ratios = [p / b for p, b in zip(rates("perfkit"), rates(baseline), strict=True)]
        low, high = ratio_confidence_interval(ratios)
        overhead = [
            p.step_ms - b.step_ms for p, b in zip(result.runs["perfkit"], result.runs[baseline], strict=True)
        ]
        summary[f"perfkit_vs_{baseline}"] = {
            "ratio": statistics.median(ratios),
            "ci95": [low, high],
            "per_step_overhead_ms": statistics.median(overhead),
            # IQR / median of the per-round ratios: above 0.1 the rounds disagree too much for a verdict
            "dispersion": round(_dispersion(ratios), 4),
            "noisy": _dispersion(ratios) > NOISY_DISPERSION,
        }
    summary["perfkit_variants"], summary["failed"] = result.perfkit_variants, dict(result.failed)
    return summary


def write(
    results: list[dict[str, Any]], device: torch.device, rounds: int, name: str = "train_parity"
) -> Path:
    from benchmarks.reporting import new_figure, write_report

    header = [
        "job",
        "plain samples/s",
        "plain resident samples/s",
        "perfkit samples/s",
        "perfkit / plain (95% CI)",
        "perfkit / plain resident (95% CI)",
        "overhead ms/step vs plain",
        "fit s (plain / perfkit)",
        "val acc (plain / perfkit)",
        "test acc (plain / perfkit)",
    ]
    rows: list[list[Any]] = [header]
    for r in results:
        plain, resident, ours = r["plain"], r["plain_resident"], r["perfkit"]
        vs_plain, vs_resident = r["perfkit_vs_plain"], r["perfkit_vs_plain_resident"]
        rows.append(
            [
                r["job"],
                f"{plain['samples_per_s']:,.0f}",
                f"{resident['samples_per_s']:,.0f}",
                f"{ours['samples_per_s']:,.0f}",
                f"**{vs_plain['ratio']:.2f}x** ({_ci(vs_plain['ci95'])}){_noisy(vs_plain)}",
                f"{vs_resident['ratio']:.2f}x ({_ci(vs_resident['ci95'])}){_noisy(vs_resident)}",
                f"{vs_plain['per_step_overhead_ms']:+.2f}",
                f"{plain['fit_s']:.2f} / {ours['fit_s']:.2f}",
                f"{plain['val_acc']:.3f} / {ours['val_acc']:.3f}",
                f"{plain['test_acc']:.3f} / {ours['test_acc']:.3f}",
            ]
        )
    figure, axes = new_figure(7.5, 1.0 + 0.8 * len(results))
    for position, r in enumerate(results):
        ours = r["perfkit"]["samples_per_s_rounds"]
        for offset, baseline in enumerate(("plain", "plain_resident")):
            ratios = [p / b for p, b in zip(ours, r[baseline]["samples_per_s_rounds"], strict=True)]
            y = position + (offset - 0.5) * 0.3
            label = f"perfkit / {baseline}" if position == 0 else None
            axes.scatter(ratios, [y] * len(ratios), s=16, color=f"C{offset}", label=label)
    axes.axvline(1.0, color="grey", linewidth=1)
    axes.set_yticks(range(len(results)), [r["job"] for r in results])
    axes.set_xlabel("perfkit's training samples/s over the hand-written loop's (each dot one round)")
    axes.legend(loc="best", fontsize=8)
    return write_report(
        name,
        {"rounds": rounds, "device": str(device), "jobs": results},
        title="Training parity: perfkit.train against a hand-written PyTorch loop",
        description=[
            f"{rounds} interleaved rounds per job after one untimed run of each variant; medians; "
            "ratios paired per round with a 95% t-interval of their geometric mean. Samples/s over the "
            "training epochs after the first (validation excluded). `fit s` runs from the first step "
            "to the end of the last validation. Accuracies are of the best-validation weights. "
            f"CPU-only reductions: {CPU_REDUCTIONS if device.type == 'cpu' else 'none'}.",
        ],
        table=rows,
        notes=[*_reduction_notes(results, device), *_variant_notes(results)],
        figure=figure,
    )


def _reduction_notes(results: list[dict[str, Any]], device: torch.device) -> list[str]:
    reduced = [r["job"] for r in results if device.type == "cpu" and r["job"] in CPU_REDUCTIONS]
    if not reduced:
        return []
    return [
        f"{', '.join(reduced)}: cut to a few steps an epoch on this CPU, so its accuracies are those of a "
        "barely trained network and move with the shuffling order (compare the two plain loops, the same "
        "loop with a different shuffle); only its speed is compared.",
        "",
    ]


def _variant_notes(results: list[dict[str, Any]]) -> list[str]:
    """A line per perfkit variant beyond the defaults: its rate against the plain loop's, or its error."""
    lines = []
    for r in results:
        overrides = r.get("perfkit_variants", {})
        for name, settings in overrides.items():
            if name in r:
                vs = r[name]["vs_plain"]
                lines.append(
                    f"- {r['job']}: perfkit with `{' '.join(settings)}`: {r[name]['samples_per_s']:,.0f} "
                    f"samples/s, {vs['ratio']:.2f}x the plain loop ({_ci(vs['ci95'])}); perfkit's defaults: "
                    f"{r['perfkit_vs_plain']['ratio']:.2f}x"
                )
        for name, error in r.get("failed", {}).items():
            lines.append(
                f"- {r['job']}: perfkit with `{' '.join(overrides.get(name, [name]))}` failed: {error}"
            )
    return (["perfkit with one setting changed (the same interleaved rounds):", *lines]) if lines else []


def _dispersion(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0  # too few rounds for quartiles: the interval says how little is known
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return (quartiles[2] - quartiles[0]) / statistics.median(values)


def _noisy(vs: dict[str, Any]) -> str:
    return f" *noisy* (IQR {vs['dispersion']:.0%})" if vs.get("noisy") else ""


def _ci(interval: list[float]) -> str:
    low, high = interval
    return "n/a" if math.isnan(low) else f"{low:.2f}-{high:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ablate", action="store_true", help="also run perfkit with each optimization off")
    parser.add_argument(
        "--defaults-only",
        action="store_true",
        help=f"on CUDA, leave out perfkit with its options on ({', '.join(OPTIONS_ON_CUDA)})",
    )
    parser.add_argument("--report", default="train_parity", help="report name: <name>-<device>.{json,md,png}")
    parser.add_argument("overrides", nargs="*", help="extra perfkit.train overrides for every job")
    args = parser.parse_args(argv)
    device_type = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    device = torch.device(device_type)
    import lightning  # noqa: F401  (it sets its loggers' levels on import: quiet them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from tqdm import tqdm

    results = []
    bar = tqdm(total=len(args.jobs) * args.rounds, unit="round", desc="parity")
    with tempfile.TemporaryDirectory(prefix="perfkit-parity-") as workdir, bar:
        for job in args.jobs:
            bar.set_postfix_str(job)
            outcome = run_job(
                job,
                device,
                rounds=args.rounds,
                extra=args.overrides,
                workdir=Path(workdir),
                perfkit_variants={
                    **(ABLATIONS if args.ablate else {}),
                    **(OPTIONS_ON_CUDA if device.type == "cuda" and not args.defaults_only else {}),
                },
                progress=lambda _: bar.update(1),
            )
            results.append(summarise(outcome))
            vs = results[-1]["perfkit_vs_plain"]
            bar.write(
                f"{job}: perfkit / plain = {vs['ratio']:.3f}x, {vs['per_step_overhead_ms']:+.2f} ms/step"
            )
    path = write(results, device, args.rounds, args.report)
    print(f"report: {path} (and .md, .png)")


if __name__ == "__main__":
    main()
