"""What a serving engineer asks first, for every candidate under the same conditions.

- **cold start**: a fresh process imports its runtime, loads the model and answers one call
  (``perfkit/serve_worker.py``; peak resident memory of that process too);
- **batch-1 latency** p50/p90/p99 and **throughput** at a batch size, in one process, all candidates
  interleaved call by call, so a busy moment of the machine hits them alike;
- optionally **tail latency under load**: N threads calling batch-1 at once, candidate by candidate;
- the file's size and the held-out accuracy the caller measured.

``ServeReport`` is data first (``to_dict``/``save``: serve.json), then ``serve.md`` and ``serve.png``
(batch-1 p50 latency against accuracy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfkit.errors import first_line
from perfkit.measure import speedup, time_interleaved
from perfkit.reporting import markdown_table
from perfkit.run import write_json
from perfkit.system import environment

WORKER = Path(__file__).with_name("serve_worker.py")
KINDS = ("torch", "torch_compile", "onnx", "aoti")
COLD_START_TIMEOUT_S = 600


@dataclass
class Candidate:
    """One way to serve the model: ``module`` runs it in this process; ``kind`` and ``path`` say how a
    fresh serving process loads it (``path`` None: ``module`` is pickled for the cold start)."""

    name: str
    module: nn.Module | Callable[..., Any]
    kind: str = "torch"
    path: str | None = None
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)


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
        from perfkit.bench.report import _pyplot

        plt = _pyplot()
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


def serve_benchmark(
    candidates: list[Candidate],
    example_inputs: tuple[torch.Tensor, ...],
    *,
    batch_size: int = 64,
    latency_calls: int = 200,
    rounds: int = 20,
    cold_starts: int = 1,
    concurrency: int = 0,
    threads: int = 1,
    device: str | torch.device = "cpu",
    work_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ServeReport:
    """Measure every candidate (see the module's docstring). ``example_inputs``: the network's inputs,
    batched on dim 0; they are cut or repeated to batch 1 and ``batch_size``. ``cold_starts``: fresh
    processes per candidate (the median kept; 0: none). ``device``: where the
    inputs go (the candidates must already run there); on CUDA each timed call is synchronised and
    the serving process moves the model there. A candidate that fails a step keeps its other
    figures and says why in ``errors``."""
    say = progress or (lambda _: None)
    _check_candidates(candidates)
    rows = {c.name: ServeRow(c.name, c.kind, _size(c), c.accuracy, notes=list(c.notes)) for c in candidates}
    device = torch.device(device)
    one = tuple(_rows(t, 1) for t in example_inputs)
    many = tuple(_rows(t, batch_size).to(device) for t in example_inputs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
            for candidate in candidates if cold_starts else ():  # 0: in-process figures only
                say(f"cold start: {candidate.name}")
                _cold_start(candidate, rows[candidate.name], one, threads, cold_starts, Path(scratch), device)
        one = tuple(t.to(device) for t in one)
        runnable = _runnable(candidates, one, rows)
        say(f"batch-1 latency: {len(runnable)} candidates x {latency_calls} calls, interleaved")
        calls = (
            _steady_state(runnable, rows, one, many, candidates[0].name, latency_calls, rounds, device)
            if runnable
            else 0
        )
        for name in runnable if concurrency else ():
            say(f"under load: {name}, {concurrency} callers")
            _under_load(runnable[name], one, concurrency, latency_calls, rows[name])
    finally:
        torch.set_num_threads(previous)
    settings = {
        "batch_size": batch_size,
        "latency_calls": latency_calls,
        "rounds": rounds,
        "cold_starts": cold_starts,
        "concurrency": concurrency,
        "threads": threads,
        "device": str(device),
        "calls_per_throughput_sample": calls,
    }
    return ServeReport(list(rows.values()), settings, environment())


def _check_candidates(candidates: list[Candidate]) -> None:
    if not candidates:
        raise ValueError("serve_benchmark: no candidates")
    names = [c.name for c in candidates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(
            f"serve_benchmark: candidate names must differ; given more than once: {', '.join(twice)}"
        )
    unknown = sorted({c.kind for c in candidates} - set(KINDS))
    if unknown:
        raise ValueError(
            f"serve_benchmark: unknown kind(s) {', '.join(unknown)}; allowed: {', '.join(KINDS)}"
        )


def _steady_state(
    runnable: dict[str, Any],
    rows: dict[str, ServeRow],
    one: tuple[torch.Tensor, ...],
    many: tuple[torch.Tensor, ...],
    baseline: str,
    latency_calls: int,
    rounds: int,
    device: torch.device,
) -> int:
    """Batch-1 percentiles (interleaved call by call) and throughput at ``len(many[0])`` (interleaved
    round by round, several calls per sample when one is short), with the paired speed-up over
    ``baseline``; returns the calls per throughput sample."""
    with torch.inference_mode():
        single = time_interleaved(
            {n: _bound(m, one) for n, m in runnable.items()}, rounds=latency_calls, warmup=3, device=device
        )
        # several calls per sample where one call is too short to time alone (a small MLP: ~1 ms)
        calls = _calls_per_sample(runnable.get(baseline, next(iter(runnable.values()))), many)
        batched = time_interleaved(
            {n: _bound(m, many) for n, m in runnable.items()},
            rounds=rounds,
            warmup=2,
            calls_per_round=calls,
            device=device,
        )
    for name in runnable:
        row = rows[name]
        row.latency_ms_p50 = single[name].quantile_ms(0.5)
        row.latency_ms_p90 = single[name].quantile_ms(0.9)
        row.latency_ms_p99 = single[name].quantile_ms(0.99)
        row.throughput_per_s = len(many[0]) / (batched[name].median_ms / 1e3)
        if baseline in batched:
            ratio = speedup(batched[baseline], batched[name])
            row.speedup, row.speedup_p10, row.speedup_p90 = ratio.median, ratio.low, ratio.high
    return calls


def _calls_per_sample(module: Any, inputs: tuple[torch.Tensor, ...], target_s: float = 0.01) -> int:
    """Calls per timed sample so that one sample lasts about ``target_s`` (at most 50)."""
    sync = torch.cuda.synchronize if inputs[0].is_cuda else (lambda: None)
    with torch.inference_mode():
        module(*inputs)  # compiled candidates compile at their first call
        sync()
        started = time.perf_counter()
        module(*inputs)
        sync()
    return max(1, min(50, round(target_s / max(time.perf_counter() - started, 1e-6))))


def _rows(tensor: torch.Tensor, size: int) -> torch.Tensor:
    repeats = -(-size // len(tensor))
    return tensor.detach().cpu().repeat(repeats, *([1] * (tensor.dim() - 1)))[:size].contiguous()


def _size(candidate: Candidate) -> int | None:
    if candidate.path:
        return Path(candidate.path).stat().st_size
    if isinstance(candidate.module, nn.Module):
        from perfkit.optim.report import serialized_size

        return serialized_size(_eager(candidate.module))
    return None


def _eager(module: Any) -> Any:
    """The module a compiled candidate wraps: what a fresh process loads before compiling."""
    from perfkit.optim.compiling import CompiledModule

    return module.module if isinstance(module, CompiledModule) else module


def _runnable(
    candidates: list[Candidate], one: tuple[torch.Tensor, ...], rows: dict[str, ServeRow]
) -> dict[str, Any]:
    """The candidates that answer a batch-1 call in this process (compiling happens here)."""
    ready = {}
    for candidate in candidates:
        try:
            with torch.inference_mode():
                candidate.module(*one)
            ready[candidate.name] = candidate.module
        except Exception as error:
            rows[candidate.name].errors.append(f"fails in this process: {_line(error)}")
    return ready


def _bound(module: Any, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    return lambda: module(*inputs)


def _cold_start(
    candidate: Candidate,
    row: ServeRow,
    one: tuple[torch.Tensor, ...],
    threads: int,
    times: int,
    scratch: Path,
    device: torch.device,
) -> None:
    import numpy as np

    inputs = scratch / f"{len(one)}-inputs.npz"
    if not inputs.exists():
        np.savez(inputs, **{f"input_{i}": t.numpy() for i, t in enumerate(one)})  # type: ignore[arg-type]
    path = candidate.path
    environment_vars = dict(os.environ)
    # an artifact loads in an isolated interpreter (-I: no PYTHONPATH, no user site); a pickled module
    # needs its classes, so that process gets this one's import path
    command = [sys.executable, "-I", "-c", WORKER.read_text()]
    if path is None:
        path = str(scratch / f"{abs(hash(candidate.name))}.pt")
        try:
            torch.save(_eager(candidate.module), path)
        except Exception as error:
            row.errors.append(
                f"cold start not measured: the module cannot be pickled for a fresh process ({_line(error)})"
            )
            return
        environment_vars["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        command = [sys.executable, "-c", WORKER.read_text()]
    results = []
    for _ in range(times):
        outcome = _one_cold_start(
            [*command, candidate.kind, path, str(inputs), str(threads), str(device)],
            environment_vars,
            scratch,
        )
        if isinstance(outcome, str):
            row.errors.append(f"cold start failed: {outcome}")
            return
        results.append(outcome)
    results.sort(key=lambda r: r[0])
    wall, breakdown = results[len(results) // 2]
    row.cold_start_s = wall
    row.peak_rss_mb = breakdown.pop("peak_rss_mb")
    row.torch_imported = breakdown.pop("torch_imported")
    row.peak_cuda_mb = breakdown.pop("peak_cuda_mb", None)
    row.provider = breakdown.pop("provider", None)
    row.cold_start_breakdown = breakdown


def _one_cold_start(
    command: list[str], env: dict[str, str], scratch: Path
) -> tuple[float, dict[str, Any]] | str:
    """(wall seconds, the worker's figures), or why it failed."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=COLD_START_TIMEOUT_S,
            check=False,
            cwd=scratch,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {COLD_START_TIMEOUT_S} s (the process was stopped)"
    wall = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {done.returncode}"
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def _under_load(module: Any, one: tuple[torch.Tensor, ...], callers: int, calls: int, row: ServeRow) -> None:
    """``callers`` threads each make ``calls // callers`` batch-1 calls at once."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    each = max(1, calls // callers)

    def call() -> None:
        own = []
        try:
            with torch.inference_mode():
                for _ in range(each):
                    started = time.perf_counter()
                    module(*one)
                    own.append(time.perf_counter() - started)
        except BaseException as error:
            errors.append(error)
        with lock:
            latencies.extend(own)

    workers = [threading.Thread(target=call) for _ in range(callers)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        row.errors.append(f"fails under load: {_line(errors[0])}")
        return
    ordered = sorted(latencies)
    row.loaded_latency_ms_p50 = ordered[len(ordered) // 2] * 1e3
    row.loaded_latency_ms_p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3
    row.loaded_throughput_per_s = len(ordered) / elapsed


def _served_in(row: ServeRow) -> float:
    """Cold start less the interpreter and imports: loading the model and its first call."""
    return row.cold_start_breakdown.get("load_s", 0.0) + row.cold_start_breakdown.get("first_call_s", 0.0)


def _line(error: BaseException) -> str:
    return first_line(error, limit=200, typed=True)


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
