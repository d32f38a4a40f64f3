"""Hostile and careless input: every user mistake is one line and a non-zero exit (2 for a mistake);
nothing is lost, nothing hangs, nothing succeeds silently.

Fast cases run the real command line in this process (the ``cli`` fixture); cases that need a process
of their own (signals, two runs at once, DDP) are marked ``slow``/``distributed``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import perfkit
from perfkit.config import ConfigError, check_output_dir_overrides, fresh_run_dir
from tests.helpers import (
    CHECKPOINT_MESSAGES,
    CHECKPOINTS,
    CLI,
    FAST,
    broken_checkpoint,
    run_cli,
    run_failure,
)

DIGITS = [*FAST, "data=digits", "model=mlp", "logger=none"]
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _one_line_error(code: int, err: str, *expected: str, status: int = 2) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == status, err
    assert lines and lines[-1].startswith("perfkit.train: "), err
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("perfkit.train: ")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]


# --- configuration mistakes: one line, exit 2, before anything is trained -------------------------
CONFIG_MISTAKES: list[Any] = [
    pytest.param(["optimizer.lr=-1"], ["AdamW refuses", "learning rate"], id="negative-lr"),
    pytest.param(
        ["optimizer=sgd", "optimizer.lr=-0.5"], ["SGD refuses", "learning rate"], id="sgd-negative-lr"
    ),
    pytest.param(["optimizer.weight_decay=-1"], ["weight_decay"], id="negative-weight-decay"),
    pytest.param(["+optimizer.betas=[2.0,0.9]"], ["beta"], id="beta-above-one"),
    pytest.param(["+optimizer.eps=-1"], ["epsilon"], id="negative-eps"),
    pytest.param(["optimizer=sgd", "optimizer.momentum=-1"], ["momentum"], id="negative-momentum"),
    pytest.param(["optimizer.lr=fast"], ["optimizer.lr='fast' is not valid"], id="lr-not-a-number"),
    pytest.param(["trainer.max_epochs=-1"], ["trains forever", "max_steps"], id="max-epochs-forever"),
    pytest.param(
        ["trainer.max_epochs=-1", "trainer.max_steps=-1"],
        ["trains forever"],
        id="max-epochs-and-steps-forever",
    ),
    pytest.param(
        ["strategy=ddp", "devices=1000"], ["1000 CPU processes", "allow_oversubscription"], id="ddp-ranks"
    ),
    pytest.param(["strategy=ddp_spawn", "devices=64"], ["64 CPU processes"], id="ddp-spawn-ranks"),
    # strategy=auto (the default) is DDP too once devices > 1
    pytest.param(["devices=99"], ["99 CPU processes"], id="auto-strategy-ranks"),
    pytest.param(
        ["strategy=ddp", f"devices=[{','.join(map(str, range(2 * _CORES + 1)))}]"],
        ["CPU processes"],
        id="ddp-rank-list",
    ),
    pytest.param(
        ["strategy=ddp", "num_nodes=2"], ["num_nodes=2 needs a launcher", "torchrun"], id="two-nodes"
    ),
    pytest.param(["num_nodes=64"], ["num_nodes=64 needs a launcher"], id="many-nodes"),
    pytest.param(["num_nodes=0"], ["num_nodes=0 is not valid"], id="zero-nodes"),
    pytest.param(["num_nodes=abc"], ["num_nodes='abc' is not valid"], id="nodes-not-a-number"),
    pytest.param(["devices=0"], ["devices=0 is not valid"], id="zero-devices"),
    pytest.param(["devices=-3"], ["devices=-3 is not valid"], id="negative-devices"),
    pytest.param(["devices=abc"], ["devices='abc' is not valid"], id="devices-not-a-number"),
    pytest.param(["devices=[0,0]"], ["devices=[0, 0] is not valid"], id="repeated-devices"),
    pytest.param(["devices=[]"], ["devices=[] is not valid"], id="no-devices"),
    pytest.param(["devices=1.5"], ["devices=1.5 is not valid"], id="fractional-devices"),
    pytest.param(["seed=abc"], ["seed='abc' is not valid"], id="seed-not-a-number"),
    pytest.param(["seed=1.5"], ["seed=1.5 is not valid"], id="fractional-seed"),
    pytest.param(["seed=-1"], ["seed=-1 is not valid", "4294967295"], id="negative-seed"),
    pytest.param(["seed=99999999999999999999999999"], ["is not valid", "4294967295"], id="huge-seed"),
    pytest.param(["accelerator=tpu9"], ["accelerator='tpu9' is not valid"], id="unknown-accelerator"),
    pytest.param(["precision=7"], ["trainer.precision=7 is not valid"], id="unknown-precision"),
    pytest.param(["resume=yes"], ["resume='yes' is not valid"], id="resume-yes"),
    pytest.param(["resume=auto", "ckpt_path=x.ckpt"], ["is not a file"], id="resume-and-missing-ckpt"),
    pytest.param(["ckpt_path=/no/such.ckpt"], ["ckpt_path='/no/such.ckpt' is not a file"], id="missing-ckpt"),
    pytest.param(["data.batch_size=0"], ["batch_size must be >= 1"], id="zero-batch"),
    pytest.param(["data.batch_size=-5"], ["batch_size must be >= 1"], id="negative-batch"),
    pytest.param(["data.batch_size=abc"], ["data.batch_size='abc' is not valid"], id="batch-not-a-number"),
    pytest.param(["data.num_workers=-2"], ["num_workers must be"], id="negative-workers"),
    pytest.param(["data.resident_memory_fraction=5"], ["resident_memory_fraction"], id="resident-fraction"),
    pytest.param(
        ["data.device_resident=maybe"], ["data.device_resident='maybe' is not valid"], id="resident-maybe"
    ),
    pytest.param(["data.val_fraction=1.5"], ["val_fraction=1.5"], id="val-fraction"),
    pytest.param(["trainer.max_epochs=1e308"], ["trainer.max_epochs=1e+308 is not valid"], id="float-epochs"),
    pytest.param(
        ["trainer.max_epochs=abc"], ["trainer.max_epochs='abc' is not valid"], id="epochs-not-a-number"
    ),
    pytest.param(["trainer.max_epochs=" + "9" * 40], ["out of range", "64 bits"], id="absurd-epochs"),
    pytest.param(
        ["model=cnn", "model.net.channels=[32," + "9" * 30 + "]"], ["out of range"], id="absurd-channels"
    ),
    pytest.param(["data.batch_size=" + "9" * 400], ["out of range"], id="400-digit-batch"),
    pytest.param(["trainer.accumulate_grad_batches=0"], ["accumulate_grad_batches=0"], id="accumulate-zero"),
    pytest.param(["trainer.log_every_n_steps=-1"], ["log_every_n_steps=-1"], id="log-every-negative"),
    pytest.param(["trainer.check_val_every_n_epoch=0"], ["check_val_every_n_epoch=0"], id="val-every-zero"),
    pytest.param(["trainer.val_check_interval=0"], ["val_check_interval=0"], id="val-interval-zero"),
    pytest.param(["trainer.gradient_clip_val=-1"], ["gradient_clip_val=-1"], id="negative-clip"),
    pytest.param(["trainer.limit_train_batches=-1"], ["limit_train_batches"], id="negative-limit"),
    pytest.param(["+trainer.max_time=abc"], ["not a valid duration"], id="bad-max-time"),
    pytest.param(["callbacks.model_checkpoint.mode=sideways"], ["sideways"], id="checkpoint-mode"),
    pytest.param(["optimize.compile_mode=fast"], ["compile_mode"], id="compile-mode"),
    pytest.param(["optimize.prune.amount=1.5"], ["optimize.prune.amount=1.5"], id="prune-amount"),
    pytest.param(["optimize.prune.amount=-0.1"], ["optimize.prune.amount=-0.1"], id="negative-prune"),
    pytest.param(["optimize.prune.method=magic"], ["magic"], id="prune-method"),
    pytest.param(["optimize.prune.at_epoch=-1"], ["at_epoch=-1"], id="prune-epoch"),
    pytest.param(["model=cnn", "model.net.channels=[-1,4]"], ["negative dimension"], id="negative-channels"),
    pytest.param(["model.label_smoothing=abc"], ["model.label_smoothing='abc'"], id="smoothing-type"),
    pytest.param(["data=imagefolder"], ["data.root"], id="imagefolder-no-root"),
    pytest.param(
        ["data=imagefolder", "data.root=/no/such/dir"], ["is not a directory"], id="imagefolder-missing"
    ),
    pytest.param(
        ["data=imagefolder", "data.root=" + "x" * 5000],
        ["is not a directory", "File name too long"],
        id="5000-char-root",
    ),
    pytest.param(
        ["data=imagefolder", "data.root=/etc/hostname"], ["is not a directory"], id="imagefolder-file"
    ),
    pytest.param(
        ["accelerator=cuda"],
        ["not available"],
        id="no-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
]


@pytest.mark.parametrize(("args", "expected"), CONFIG_MISTAKES)
def test_a_configuration_mistake_is_one_line_and_status_2(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: list[str]
) -> None:
    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GROUP_RANK"):
        monkeypatch.delenv(variable, raising=False)
    code, err = cli(*DIGITS, *args)
    _one_line_error(code, err, *expected)


def test_more_cpu_ranks_than_cores_are_allowed_when_asked_for(cli: CLI) -> None:
    code, err = cli(
        *DIGITS, "strategy=ddp", "devices=1000", "allow_oversubscription=true", "trainer.max_epochs=abc"
    )
    # gets past the rank check, to the next mistake
    _one_line_error(code, err, "trainer.max_epochs='abc'")


def test_max_epochs_minus_one_is_fine_with_another_stop(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(
        *DIGITS, "trainer.max_epochs=-1", "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert code == 0, run_failure(err)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["optimizer_steps"] == 3


# --- checkpoints that are not checkpoints, or not this model's -------------------------------------
@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_ckpt_path_is_one_line(cli: CLI, tmp_path: Path, kind: str) -> None:
    code, err = cli(*DIGITS, f"ckpt_path={broken_checkpoint(kind, tmp_path)}")
    _one_line_error(code, err, CHECKPOINT_MESSAGES[kind])


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "other-model"])
def test_resume_auto_from_a_bad_last_checkpoint_is_one_line(cli: CLI, tmp_path: Path, kind: str) -> None:
    run_dir = tmp_path / "interrupted"
    (run_dir / "checkpoints").mkdir(parents=True)
    broken_checkpoint(kind, tmp_path).rename(run_dir / "checkpoints" / "last.ckpt")
    code, err = cli(*DIGITS, "resume=auto", f"hydra.run.dir={run_dir}")
    _one_line_error(code, err, "resume=auto", CHECKPOINT_MESSAGES[kind])
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # left for the user to look at


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_optimize_refuses_a_bad_checkpoint_in_one_line(tmp_path: Path, kind: str) -> None:
    from perfkit.optimize import load_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    broken_checkpoint(kind, tmp_path).rename(run / "checkpoints" / "best.ckpt")
    with pytest.raises(ConfigError, match=CHECKPOINT_MESSAGES[kind]):
        load_run(str(run / "checkpoints" / "best.ckpt"))


# --- image folders that are not what they should be ------------------------------------------------
def _folder(kind: str, root: Path) -> Path:
    from tests.helpers import make_image_folder

    root.mkdir(parents=True)
    if kind == "empty":
        return root
    if kind == "class-without-images":
        make_image_folder(root / "images", classes=2, per_class=4)
        (root / "images" / "class_9").mkdir()
        return root / "images"
    if kind == "only-text-files":
        for name in ("cats", "dogs"):
            (root / name).mkdir()
            (root / name / "notes.txt").write_text("not an image")
        return root
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "has no class sub-folders"),
        ("class-without-images", "class_9"),
        ("only-text-files", "Found no valid file"),
    ],
)
def test_an_image_folder_without_images_is_one_line(
    cli: CLI, tmp_path: Path, kind: str, expected: str
) -> None:
    root = _folder(kind, tmp_path / "data")
    code, err = cli(*FAST, "logger=none", "data=imagefolder", f"data.root={root}", "data.image_size=16")
    _one_line_error(code, err, expected)


def test_a_corrupt_image_stops_training_with_its_path(cli: CLI, image_folder: Path) -> None:
    broken = image_folder / "class_1" / "3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # a PNG header, then garbage
    code, err = cli(
        *FAST, "logger=none", "data=imagefolder", f"data.root={image_folder}", "data.image_size=16"
    )
    _one_line_error(code, err, str(broken), "cannot be read as an image")


# --- the run directory: reserved before writing, never shared, never overwritten -------------------


def test_default_run_directories_started_in_one_second_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perfkit.run

    monkeypatch.delenv("PERFKIT_RUN_ID", raising=False)
    made = []
    for _ in range(3):  # three processes: each starts with no memory of the others
        monkeypatch.setattr(perfkit.run, "_fresh_dirs", {})
        made.append(fresh_run_dir(str(tmp_path / "runs")))
    assert len(set(made)) == 3 and all(Path(d).is_dir() for d in made)


def test_a_run_id_names_the_directory_for_every_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFKIT_RUN_ID", "job-7")
    assert fresh_run_dir(str(tmp_path)) == str(tmp_path / "job-7")
    assert fresh_run_dir(str(tmp_path)) == str(tmp_path / "job-7")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("hydra.run.dir=/etc/hostname/run", "is not a directory"),
        ("hydra.sweep.dir=/etc/hostname/sweep", "is not a directory"),
        ("+hydra.run.dir=/etc/hostname/x/y", "is not a directory"),
        (
            f"hydra.run.dir=/tmp/{'a' * 300}/run",
            "a name in it is 300 bytes long, more than the file system's",
        ),
        ("hydra.run.dir=/tmp/" + "/".join(["b" * 200] * 21), "more than the system's 4095"),
    ],
)
def test_a_run_directory_that_cannot_be_made_is_one_line(
    override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        check_output_dir_overrides("perfkit.train", [override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("perfkit.train: error: ") and expected in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("below", ["", "/run"])
def test_a_dangling_symlink_as_run_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], below: str
) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(SystemExit) as exit_:
        check_output_dir_overrides("perfkit.train", [f"hydra.run.dir={tmp_path / 'link'}{below}"])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'link'} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in (
        capsys.readouterr().err
    )


def test_an_unwritable_log_dir_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        fresh_run_dir("/etc/hostname/outputs")
    assert exit_.value.code == 2
    assert "cannot create a run directory under /etc/hostname/outputs" in capsys.readouterr().err


def test_a_failed_run_leaves_the_previous_runs_files_untouched(cli: CLI, tmp_path: Path) -> None:
    run_dir = tmp_path / "earlier"
    code, err = cli(*DIGITS, f"hydra.run.dir={run_dir}")
    assert code == 0, run_failure(err)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    for args in (["optimizer.lr=-1"], ["seed=3"], ["resume=auto"]):
        code, err = cli(*DIGITS, *args, f"hydra.run.dir={run_dir}")
        assert code == 2, err
    assert {p: p.read_bytes() for p in before} == before


# --- divergence: stopped, said, never NaN in JSON ----------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [["optimizer=sgd", "optimizer.lr=1e12"], ["optimizer.lr=1e6"]],
    ids=["sgd-nan", "adamw-explodes"],
)
def test_a_diverging_run_stops_with_one_line_and_status_1(cli: CLI, tmp_path: Path, args: list[str]) -> None:
    run_dir = tmp_path / "diverged"
    code, err = cli(*FAST, "logger=none", "trainer.limit_train_batches=30", *args, f"hydra.run.dir={run_dir}")
    _one_line_error(code, err, "training diverged", "optimizer.lr", status=1)
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # a diverged model is never "best"


def test_the_divergence_check_does_not_sync_every_step() -> None:
    from types import SimpleNamespace

    from perfkit.callbacks import DivergedError, DivergenceCheck

    check = DivergenceCheck()
    trainer = SimpleNamespace(
        log_every_n_steps=10, is_last_batch=False, world_size=1, current_epoch=0, global_step=3
    )
    for step, loss in enumerate([2.3, 2.2, float("nan"), 2.1]):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, step)  # type: ignore[arg-type]
    trainer.is_last_batch = True
    with pytest.raises(DivergedError, match="NaN"):
        check.on_train_batch_end(trainer, None, torch.tensor(2.0), None, 4)  # type: ignore[arg-type]


# --- models nobody here wrote, and wrong arguments to the library ----------------------------------
class _Mlp(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


LIBRARY_MISTAKES: list[Any] = [
    pytest.param(
        lambda: perfkit.quantize("not a model"),
        TypeError,
        "takes a torch.nn.Module, not str",
        id="quantize-str",
    ),
    pytest.param(lambda: perfkit.quantize(None), TypeError, "not NoneType", id="quantize-none"),
    pytest.param(
        lambda: perfkit.quantize(_Mlp(), scheme="int4"),
        ValueError,
        "unknown quantization scheme",
        id="q-scheme",
    ),
    pytest.param(
        lambda: perfkit.quantize(_Mlp(), backend="tensorrt"),
        ValueError,
        "unknown quantization backend",
        id="q-backend",
    ),
    pytest.param(
        lambda: perfkit.quantize(_Mlp(), example_inputs=torch.zeros(1, 3)),
        ValueError,
        "cannot run on example_inputs",
        id="quantize-wrong-example",
    ),
    pytest.param(
        lambda: perfkit.compile(42), TypeError, "takes a torch.nn.Module, not int", id="compile-int"
    ),
    pytest.param(lambda: perfkit.compile(lambda x: x), TypeError, "not function", id="compile-function"),
    pytest.param(
        lambda: perfkit.compile(_Mlp(), mode="ludicrous"), ValueError, "unknown compile mode", id="c-mode"
    ),
    pytest.param(
        lambda: perfkit.compile(_Mlp(), backend="nope"), ValueError, "unknown compile backend", id="c-backend"
    ),
    pytest.param(
        lambda: perfkit.compile(_Mlp(), dynamic="yes"), ValueError, "dynamic must be", id="c-dynamic"
    ),
    pytest.param(
        lambda: perfkit.prune("x", amount=0.5), TypeError, "takes a torch.nn.Module", id="prune-str"
    ),
    pytest.param(lambda: perfkit.prune(_Mlp(), amount=1.5), ValueError, "amount must be", id="prune-amount"),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=-0.1), ValueError, "amount must be", id="prune-negative"
    ),
    pytest.param(lambda: perfkit.prune(_Mlp(), amount="half"), ValueError, "amount must be", id="prune-text"),
    pytest.param(lambda: perfkit.prune(_Mlp(), amount=True), ValueError, "amount must be", id="prune-bool"),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="magic"),
        ValueError,
        "unknown pruning method",
        id="p-method",
    ),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="channels"),
        ValueError,
        "needs example_inputs",
        id="p-no-example",
    ),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="channels", example_inputs=torch.zeros(1, 3)),
        ValueError,
        "cannot run on example_inputs",
        id="prune-wrong-shape",
    ),
    pytest.param(
        lambda: perfkit.prune(_Mlp(), amount=0.5, method="channels", example_inputs="abc"),
        ValueError,
        "cannot run on example_inputs",
        id="prune-wrong-type",
    ),
    pytest.param(
        lambda: perfkit.prune(nn.ReLU(), amount=0.5), ValueError, "nothing to prune", id="prune-nothing"
    ),
    pytest.param(
        lambda: perfkit.benchmark("m", torch.zeros(1)),
        TypeError,
        "mapping of names to models",
        id="bench-str",
    ),
    pytest.param(
        lambda: perfkit.benchmark({}, torch.zeros(1)),
        TypeError,
        "mapping of names to models",
        id="bench-empty",
    ),
    pytest.param(
        lambda: perfkit.benchmark({"a": 42}, torch.zeros(1)),
        TypeError,
        "variant 'a' is a int",
        id="bench-int",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), LIBRARY_MISTAKES)
def test_a_library_mistake_is_one_clear_exception(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        call()
    assert len(str(raised.value).splitlines()) == 1


def _transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2).eval()


def test_quantize_hands_back_a_transformer_that_runs() -> None:
    model, x = _transformer(), torch.randn(2, 5, 32)
    with pytest.warns(UserWarning, match="no layer could be quantized"):
        quantized = perfkit.quantize(model, example_inputs=x)
    with torch.inference_mode():
        assert torch.allclose(quantized(x), model(x), atol=1e-5)
    assert any("kept in fp32" in note for note in perfkit.optim.reports(quantized)[-1].notes)


def test_quantize_still_quantizes_the_rest_of_a_model_with_a_transformer() -> None:
    model = nn.Sequential(_transformer(), nn.Flatten(), nn.Linear(5 * 32, 4)).eval()
    quantized = perfkit.quantize(model, example_inputs=torch.randn(2, 5, 32))
    assert perfkit.optim.reports(quantized)[-1].changed == {"Linear": 1}


def test_prune_reports_the_sparsity_of_every_weight_matrix_and_lists_what_it_left() -> None:
    from torchvision.models import VisionTransformer

    from perfkit.optim.report import weight_matrices

    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    pruned = perfkit.prune(vit, amount=0.5)
    report = perfkit.optim.reports(pruned)[-1]
    matrices = weight_matrices(pruned)
    actual = sum(int((m == 0).sum()) for m in matrices) / sum(m.numel() for m in matrices)
    assert report.sparsity_after == pytest.approx(actual)
    assert report.changed["MultiheadAttention"] == 2  # in_proj_weight is pruned too
    assert all(
        float((a.in_proj_weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
        for a in (m for m in pruned.modules() if isinstance(m, nn.MultiheadAttention))
    )
    assert set(report.skipped) == {"LayerNorm", "Encoder", "VisionTransformer"}  # class token, positions


def test_a_compile_that_fell_back_says_so_in_its_report() -> None:
    class Breaks(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch._dynamo.graph_break()
            return x + 1

    compiled = perfkit.compile(Breaks(), backend="eager", fullgraph=True)
    with pytest.warns(UserWarning, match="running eager instead"):
        assert torch.equal(compiled(torch.zeros(2)), torch.ones(2))
    notes = perfkit.optim.reports(compiled)[-1].notes
    assert notes and notes[0].startswith("torch.compile failed at the first call; this model runs eager")


# --- the benchmark regression gate -----------------------------------------------------------------
def _report(tmp_path: Path, name: str, rows: Any) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"rows": rows}) if not isinstance(rows, str) else rows)
    return path


_ROW = {
    "model": "mlp",
    "variant": "compiled",
    "device": "cpu",
    "mode": "inference",
    "batch_size": 8,
    "speedup": 1.5,
    "speedup_ci_low": 1.4,
    "speedup_ci_high": 1.6,
}


@pytest.mark.parametrize(
    ("new", "status", "message"),
    [
        ([], 2, "has no measured rows"),
        ([{**_ROW, "status": "failed"}], 2, "has no measured rows"),
        ([{**_ROW, "variant": "other"}], 1, "regression(s): mlp/compiled"),
        ([{**_ROW, "speedup": "fast"}], 2, "rows[0].speedup='fast' is not a number"),
        ([{**_ROW, "batch_size": "eight"}], 2, "rows[0].batch_size='eight' is not a number"),
        ([{**_ROW, "model": 3}], 2, "rows[0].model=3 is not text"),
        ([{**_ROW, "notes": "fine"}], 2, "rows[0].notes='fine' is not a list of text"),
        ([{**_ROW, "speedup": None, "model": None}], 2, "rows[0].model=None is not text"),
        (["a row"], 2, "rows[0] is str, not an object"),
        ([{"variant": "x"}], 2, "a row is not a benchmark row"),
        ("{not json", 2, "not a JSON benchmark report"),
        ("[1, 2]", 2, "no 'rows' list"),
        ('{"rows": {}}', 2, "no 'rows' list"),
        ("", 2, "not a JSON benchmark report"),
    ],
    ids=lambda value: None,
)
def test_compare_fails_on_a_report_that_lost_or_mangled_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new: Any, status: int, message: str
) -> None:
    from perfkit.bench.compare import main

    base = _report(tmp_path, "base", [_ROW])
    assert main([str(base), str(_report(tmp_path, "new", new))]) == status
    assert message in capsys.readouterr().err


# --- Weights & Biases without a server --------------------------------------------------------------
def test_wandb_online_without_network_falls_back_offline_quickly(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    code, err = cli(*DIGITS, "logger=wandb", "logger.wandb.offline=false", f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 0, run_failure(err)
    assert time.monotonic() - started < 60
    assert "W&B server unreachable: logging offline" in (tmp_path / "r" / "train.log").read_text()
    assert list((tmp_path / "r" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(("mode", "status"), [("", 0), ("  ", 0), ("sideways", 2)])
def test_wandb_mode_empty_means_unset_and_nonsense_is_refused(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, status: int
) -> None:
    monkeypatch.setenv("WANDB_MODE", mode)
    code, err = cli(*DIGITS, "logger=wandb", f"hydra.run.dir={tmp_path / 'r'}")
    if status:
        _one_line_error(code, err, f"WANDB_MODE={mode!r} is not valid")
    else:
        assert code == 0, run_failure(err)


# --- a user's own LightningModule: perfkit's optimizer settings can't reach it ------------------------
def test_an_optimizer_override_a_users_module_would_ignore_is_refused(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "user.yaml").write_text(
        "_target_: tests.helpers.toy_models.UserLightningModule\n"
    )
    own = f"--config-dir={tmp_path / 'conf'}"
    code, err = cli(own, *DIGITS, "model=user", "optimizer=sgd", "optimizer.lr=5.0")
    _one_line_error(code, err, "optimizer=sgd", "takes no optimizer", "configure_optimizers")
    code, err = cli(
        own, *DIGITS, "model=user", f"hydra.run.dir={tmp_path / 'fine'}"
    )  # without the override it trains
    assert code == 0, run_failure(err)


# --- process-level: signals, two runs at once, a rank that dies --------------------------------------
@pytest.mark.slow
def test_sigterm_exits_143_keeps_last_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root}
    args = [
        *DIGITS,
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=4",
        "data.batch_size=8",
        "hydra.run.dir=run",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", *args],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and "resume=auto" in err
    assert last.exists() and not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / ".perfkit-run.lock").exists()
    code, _, err = run_cli(*args, "resume=auto", cwd=tmp_path)
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoints/last.ckpt" and metrics["epochs"] == 4


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": root}
    return subprocess.Popen(
        [sys.executable, "-m", "perfkit.train", *DIGITS, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_runs_started_together_into_one_directory_never_mix(tmp_path: Path) -> None:
    runs = [_start(tmp_path, f"seed={seed}", "hydra.run.dir=shared") for seed in (1, 2)]
    results = [(run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another perfkit run" in refused or "already holds an earlier run" in refused
    shared = tmp_path / "shared"
    metrics = json.loads((shared / "metrics.json").read_text())
    assert f"seed: {metrics['seed']}" in (shared / "config.yaml").read_text()
    assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path: Path) -> None:
    runs = [_start(tmp_path, f"seed={seed}", "paths.log_dir=out") for seed in (1, 2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    directories = sorted((tmp_path / "out" / "train" / "runs").iterdir())
    assert len(directories) == 2
    seeds = {json.loads((d / "metrics.json").read_text())["seed"] for d in directories}
    assert seeds == {1, 2}
