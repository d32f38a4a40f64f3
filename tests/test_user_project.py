"""A user's own LightningModule/LightningDataModule (tests/user_project/userpkg, written without perfkit
in mind) through each route docs/own-model.md documents."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers import CLI, run_failure

PROJECT = Path(__file__).parent / "user_project"
QUICK = ("debug=fast", "logger=none", "trainer.enable_progress_bar=false", "accelerator=cpu")


@pytest.fixture(autouse=True)
def _userpkg_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PROJECT))


def _run_files(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return metrics, config


def test_targets_named_on_the_command_line_get_only_their_own_parameters(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(
        "data._target_=userpkg.DigitsData",
        "model._target_=userpkg.DigitsNet",
        "+model.hidden=16",
        "monitor=val/accuracy",
        *QUICK,
    )
    assert code == 0, run_failure(err)
    metrics, config = _run_files(tmp_path / "cli")
    assert config["data"] == {"_target_": "userpkg.DigitsData", "batch_size": 64}
    assert config["model"] == {"_target_": "userpkg.DigitsNet", "hidden": 16}
    assert metrics["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    assert set(metrics["val"]) == {"accuracy"} and metrics["best_checkpoint"] == "checkpoints/best.ckpt"


def test_a_key_the_user_sets_still_names_a_typo(cli: CLI) -> None:
    code, err = cli(
        "data._target_=userpkg.DigitsData", "model._target_=userpkg.DigitsNet", "data.num_workers=2"
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "perfkit.train: error: data.num_workers: userpkg.DigitsData has no parameter 'num_workers'; "
        "allowed: batch_size"
    )


def test_an_optimizer_override_a_module_would_ignore_is_refused(cli: CLI) -> None:
    code, err = cli("data._target_=userpkg.DigitsData", "model._target_=userpkg.DigitsNet", "optimizer=sgd")
    assert code == 2 and "userpkg.DigitsNet takes no optimizer" in err


def test_an_unlogged_monitored_metric_names_the_key_that_chooses_it(cli: CLI) -> None:
    code, err = cli("data._target_=userpkg.DigitsData", "model._target_=userpkg.DigitsNet", *QUICK)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "'val/accuracy'" in line and "monitor=..." in line, line


def test_own_config_dir_composes_with_a_tuned_overlay(cli: CLI, tmp_path: Path) -> None:
    from perfkit.tune.report import train_command

    tune_run = tmp_path / "tune"
    (tune_run / "configs" / "experiment").mkdir(parents=True)
    (tune_run / "configs" / "experiment" / "tuned.yaml").write_text(
        "# @package _global_\ndata:\n  batch_size: 16\n"
    )
    printed = shlex.split(train_command(tune_run))
    code, err = cli(
        f"--config-dir={PROJECT / 'configs'}",
        "model=digits_net",
        "data=digits_data",
        *printed[3:],
        "monitor=val/accuracy",
        "monitor_mode=max",
        *QUICK,
    )
    assert code == 0, run_failure(err)
    metrics, config = _run_files(tmp_path / "cli")
    assert config["model"] == {"_target_": "userpkg.DigitsNet", "hidden": 32}
    assert config["data"]["batch_size"] == 16  # the overlay's, over the user's own file's 32
    assert metrics["test"]["accuracy"] >= 0


def test_monitor_mode_is_checked(cli: CLI) -> None:
    code, err = cli("monitor_mode=maximum")
    assert code == 2 and "monitor_mode='maximum' is not valid; allowed: max, min" in err
