"""perfkit.config.preflight against hostile input: every configuration mistake is one line and exit
status 2, before anything is built; a setting that is odd but valid is let through."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import (
    CLI,
    run_failure,
)
from tests.helpers.checks import DIGITS, one_line_error

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


@pytest.mark.hostile
@pytest.mark.parametrize(("args", "expected"), CONFIG_MISTAKES)
def test_a_configuration_mistake_is_one_line_and_status_2(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: list[str]
) -> None:
    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GROUP_RANK"):
        monkeypatch.delenv(variable, raising=False)
    code, err = cli(*DIGITS, *args)
    one_line_error(code, err, *expected)


@pytest.mark.hostile
def test_more_cpu_ranks_than_cores_are_allowed_when_asked_for(cli: CLI) -> None:
    code, err = cli(
        *DIGITS, "strategy=ddp", "devices=1000", "allow_oversubscription=true", "trainer.max_epochs=abc"
    )
    # gets past the rank check, to the next mistake
    one_line_error(code, err, "trainer.max_epochs='abc'")


@pytest.mark.hostile
def test_max_epochs_minus_one_is_fine_with_another_stop(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(
        *DIGITS, "trainer.max_epochs=-1", "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert code == 0, run_failure(err)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["optimizer_steps"] == 3


@pytest.mark.hostile
# --- a user's own LightningModule: perfkit's optimizer settings can't reach it ------------------------
def test_an_optimizer_override_a_users_module_would_ignore_is_refused(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "user.yaml").write_text(
        "_target_: tests.helpers.toy_models.UserLightningModule\n"
    )
    own = f"--config-dir={tmp_path / 'conf'}"
    code, err = cli(own, *DIGITS, "model=user", "optimizer=sgd", "optimizer.lr=5.0")
    one_line_error(code, err, "optimizer=sgd", "takes no optimizer", "configure_optimizers")
    code, err = cli(
        own, *DIGITS, "model=user", f"hydra.run.dir={tmp_path / 'fine'}"
    )  # without the override it trains
    assert code == 0, run_failure(err)
