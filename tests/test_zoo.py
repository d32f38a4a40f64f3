"""Real-world LightningModule shapes (tests/user_project/zoo) through every perfkit command: train (one
process and 2-rank DDP), optimize, tune, profile, and bench's pointer to them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import CLI, run_cli, run_failure

PROJECT = Path(__file__).parent / "user_project"
QUICK = ("debug=fast", "logger=none", "trainer.enable_progress_bar=false", "accelerator=cpu")

# each shape as a user names it on the command line
SHAPES: dict[str, tuple[str, ...]] = {
    "template": (f"--config-dir={PROJECT / 'configs'}", "model=template", "data=template"),
    "gan": ("model._target_=zoo.gan.GAN", "data._target_=zoo.autoencoder.DigitsImages"),
    "autoencoder": (
        "model._target_=zoo.autoencoder.LitAutoEncoder",
        "data._target_=zoo.autoencoder.DigitsImages",
        "monitor=val_loss",
        "monitor_mode=min",
    ),
    "lm": (
        "model._target_=zoo.lm.LanguageModel",
        "data._target_=zoo.lm.CountingData",
        "monitor=val_loss",
        "monitor_mode=min",
    ),
}


@pytest.fixture(autouse=True)
def _zoo_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PROJECT))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))
    )


def _outputs(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return metrics, config


def test_template_project_trains_with_its_own_yaml(cli: CLI, tmp_path: Path) -> None:
    """Its data YAML as written: a list for a Tuple parameter, ${paths.data_dir}; its module keeps a
    network and optimizer partials in save_hyperparameters, and configure_optimizers reads self.trainer."""
    code, err = cli(*SHAPES["template"], *QUICK)
    assert code == 0, run_failure(err)
    metrics, config = _outputs(tmp_path / "cli")
    assert set(metrics["test"]) == {"loss", "acc"} and metrics["evaluated"] == "best checkpoint"
    assert config["data"]["train_val_test_split"] == [1437, 180, 180]
    assert config["data"]["data_dir"].endswith("data/")
    assert config["optimizer"] is None and config["model"]["optimizer"]["_target_"] == "torch.optim.Adam"


def test_a_gan_without_validation_trains_and_says_what_it_kept(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(*SHAPES["gan"], *QUICK)
    assert code == 0, run_failure(err)
    metrics, _ = _outputs(tmp_path / "cli")
    assert metrics["skipped"] == {"val": "GAN has no validation_step", "test": "GAN has no test_step"}
    assert metrics["monitor"]["metric"] is None and "g_loss, d_loss" in metrics["monitor"]["why"]
    assert (tmp_path / "cli" / "checkpoints" / "best.ckpt").is_file()
    assert metrics["val"] == {} and metrics["test"] == {}


def test_a_single_training_loss_is_followed_when_there_is_no_validation(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.autoencoder import LitAutoEncoder

    monkeypatch.delattr(LitAutoEncoder, "validation_step")
    code, err = cli(*SHAPES["autoencoder"][:2], *QUICK)
    assert code == 0, run_failure(err)
    metrics, _ = _outputs(tmp_path / "cli")
    assert metrics["monitor"]["metric"] == "train_loss" and metrics["monitor"]["mode"] == "min"
    assert metrics["skipped"] == {"val": "LitAutoEncoder has no validation_step"}
    assert set(metrics["test"]) == {"test_loss"}


def test_own_datamodule_defaults_win_and_config_records_them(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(*SHAPES["lm"], *QUICK)
    assert code == 0, run_failure(err)
    metrics, config = _outputs(tmp_path / "cli")
    assert config["data"] == {"_target_": "zoo.lm.CountingData", "batch_size": 20}
    assert config["model"] == {"_target_": "zoo.lm.LanguageModel"}
    assert config["optimizer"] is None and config["scheduler"] is None
    assert metrics["skipped"] == {"test": "LanguageModel has no test_step"}
    assert set(metrics["val"]) == {"val_loss"}


def test_compile_follows_a_module_without_forward(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(*SHAPES["lm"], *QUICK, "optimize.compile=true")
    assert code == 0, run_failure(err)
    optimize = _outputs(tmp_path / "cli")[0]["optimize"]
    assert optimize["compiled"] == ["model"] and optimize["compiled_graphs_per_rank"][0] >= 1
    assert "LanguageModel has no forward" in optimize["compile_note"]


def test_channel_pruning_takes_its_example_from_the_data(cli: CLI, tmp_path: Path) -> None:
    prune = ("optimize.prune.method=channels", "optimize.prune.amount=0.5", "optimize.prune.at_epoch=0")
    code, err = cli(*SHAPES["template"], *QUICK, *prune)
    assert code == 0, run_failure(err)
    assert _outputs(tmp_path / "cli")[0]["parameters"] < 2474  # DenseNet(64, 32, 10) had 2,474


def test_channel_pruning_of_a_module_without_forward_is_one_line(cli: CLI) -> None:
    prune = ("optimize.prune.method=channels", "optimize.prune.amount=0.5", "optimize.prune.at_epoch=0")
    code, err = cli(*SHAPES["lm"], *QUICK, *prune)
    assert code == 2
    assert "LanguageModel has none: use a mask method" in err.strip().splitlines()[-1]


def test_naming_a_users_class_on_the_command_line_says_what_it_still_needs(cli: CLI) -> None:
    code, err = cli(
        "model._target_=zoo.template.TemplateLitModule", "data._target_=zoo.template.DigitsDataModule", *QUICK
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "perfkit.train: error: model: zoo.template.TemplateLitModule needs net, optimizer, scheduler, which "
        "the config does not give (e.g. model.net._target_=..., or your own model config: --config-dir DIR "
        "model=NAME)"
    )


def test_nested_overrides_get_only_their_own_keys(cli: CLI, tmp_path: Path) -> None:
    code, err = cli(
        "model._target_=zoo.template.TemplateLitModule",
        "model.net._target_=zoo.template.DenseNet",
        "optimizer=adamw",
        "scheduler=none",
        "data._target_=zoo.template.DigitsDataModule",
        *QUICK,
    )
    assert code == 0, run_failure(err)
    _, config = _outputs(tmp_path / "cli")
    assert config["model"]["net"] == {"_target_": "zoo.template.DenseNet", "hidden": 32}
    assert config["model"]["optimizer"]["_target_"] == "torch.optim.AdamW"  # optimizer=adamw, chosen
    assert config["data"]["pin_memory"] is False  # its own default, not perfkit's null


def test_an_unresolvable_interpolation_is_one_line(cli: CLI) -> None:
    code, err = cli(*SHAPES["template"], *QUICK, "data.data_dir=${paths.nowhere}")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("perfkit.train: error: data.data_dir=${paths.nowhere} does not resolve"), line
    assert "paths has: log_dir, output_dir, root_dir, data_dir, work_dir" in line


def test_bench_points_a_users_model_to_optimize_and_tune() -> None:
    code, _, err = run_cli("model._target_=zoo.gan.GAN", cwd=PROJECT, module="perfkit.bench", timeout=120)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "perfkit.bench measures its own benchmark models" in line and "perfkit.optimize ckpt_path=" in line


# -- optimize, tune, profile and DDP on each shape (slow: each trains first) ---------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each shape trained for a few batches; its best checkpoint."""
    root = tmp_path_factory.mktemp("zoo-runs")
    checkpoints = {}
    for name, args in SHAPES.items():
        code, _, err = run_cli(*args, *QUICK, f"hydra.run.dir={root / name}", cwd=PROJECT, timeout=300)
        assert code == 0, run_failure(err)
        checkpoints[name] = root / name / "checkpoints" / "best.ckpt"
    return checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_optimize_scores_each_shape_with_its_own_steps(
    name: str, trained: dict[str, Path], tmp_path: Path
) -> None:
    code, _, err = run_cli(
        f"ckpt_path={trained[name]}",
        "prune.amount=0.3",
        "prune.finetune_epochs=1",
        "quantize=int8_dynamic",
        "benchmark.rounds=3",
        "benchmark.warmup=1",
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=PROJECT,
        module="perfkit.optimize",
    )
    assert code == 0, run_failure(err)
    result = json.loads((tmp_path / "out" / "comparison.json").read_text())
    logged = {
        "template": {"val/loss", "val/acc", "test/loss", "test/acc"},
        "gan": set(),
        "autoencoder": {"val_loss", "test_loss"},
        "lm": {"val_loss"},
    }[name]
    assert [set(row["metrics"]) for row in result["rows"]] == [logged] * 3
    assert result["network"] == {"template": "net", "gan": "", "autoencoder": "", "lm": "model"}[name]
    assert result["rows"][2]["size_bytes"] < result["rows"][0]["size_bytes"]
    assert ("test_acc" in result["rows"][0]) == (name == "template")
    if name == "gan":
        assert result["score"].startswith("none: GAN has no validation_step")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_tune_runs_each_shape_through_lightning(name: str, tmp_path: Path) -> None:
    code, _, err = run_cli(
        *SHAPES[name],
        "accelerator=cpu",
        "tune.budget_s=40",
        "tune.rounds=6",
        "tune.accuracy_steps=12",
        "tune.max_batch_factor=2",
        f"hydra.run.dir={tmp_path / 'tune'}",
        cwd=PROJECT,
        module="perfkit.tune",
        timeout=400,
    )
    assert code == 0, run_failure(err)
    outcomes = json.loads((tmp_path / "tune" / "tune.json").read_text())["candidates"]
    assert not [o for o in outcomes if o["status"] == "failed"], outcomes
    assert [o for o in outcomes if o["status"] in ("accepted", "rejected")]
    if name == "gan":  # nothing to score: numerics-changing settings are not tried, and it says so
        numerics = [o for o in outcomes if o["changes_numerics"]]
        assert numerics and all(o["status"] == "skipped" for o in numerics)
        assert all("no held-out metric" in o["reason"] for o in numerics)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gan", "lm"])
def test_profile_breaks_down_each_shape(name: str, tmp_path: Path) -> None:
    code, _, err = run_cli(
        *SHAPES[name],
        "accelerator=cpu",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'p'}",
        cwd=PROJECT,
        module="perfkit.profile",
    )
    assert code == 0, run_failure(err)
    profile = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert profile["breakdown"] and (tmp_path / "p" / "profile.md").is_file()


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(SHAPES))
def test_two_rank_ddp_trains_each_shape(name: str, tmp_path: Path) -> None:
    code, _, err = run_cli(
        *SHAPES[name],
        *QUICK,
        "strategy=ddp",
        "devices=2",
        f"hydra.run.dir={tmp_path / 'ddp'}",
        cwd=PROJECT,
        timeout=400,
    )
    assert code == 0, run_failure(err)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_export_and_serve_each_shape(name: str, trained: dict[str, Path], tmp_path: Path) -> None:
    """Every shape exports (or says in one line why not) and is measured as a serving candidate."""
    code, _, err = run_cli(
        f"ckpt_path={trained[name]}",
        "export=[onnx,onnx_int8]",
        "serve.enabled=true",
        "serve.latency_calls=5",
        "serve.rounds=2",
        "benchmark.rounds=3",
        "benchmark.warmup=1",
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=PROJECT,
        module="perfkit.optimize",
        timeout=600,
    )
    assert code == 0, run_failure(err)
    result = json.loads((tmp_path / "out" / "comparison.json").read_text())
    exported = [e["format"] for e in result["exports"] if "error" not in e]
    for record in result["exports"]:
        assert "\n" not in record.get("error", "")
    assert [row["variant"] for row in result["rows"]] == ["original", *exported]
    served = result["serve"]["rows"]
    assert [row["name"] for row in served] == ["original", *exported]
    assert all(row["errors"] == [] and row["latency_ms_p50"] > 0 for row in served)
