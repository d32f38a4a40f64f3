"""Every YAML under configs/ composes, passes validation and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from perfkit.build import build_strategy
from perfkit.config import ConfigError, check_config, check_node, compose_config, config_dir, instantiate_all
from tests.helpers import ComposeTrain

CONFIGS = config_dir()
# group -> options; files included by other files (data/loader) are covered through those
GROUP_OPTIONS = sorted(
    (path.parent.name, path.stem)
    for path in CONFIGS.glob("*/*.yaml")
    if path.parent.name not in ("hydra", "paths", "bench")
)
BENCH_PRESETS = sorted(path.stem for path in (CONFIGS / "bench").glob("*.yaml"))


def test_configs_dir_is_the_repositorys_top_level_configs() -> None:
    assert (CONFIGS / "train.yaml").is_file()
    assert CONFIGS.resolve() == (Path(__file__).parents[1] / "configs").resolve()


def test_every_yaml_file_is_covered() -> None:
    covered = {CONFIGS / group / f"{option}.yaml" for group, option in GROUP_OPTIONS}
    covered |= {CONFIGS / "train.yaml", CONFIGS / "hydra/default.yaml", CONFIGS / "paths/default.yaml"}
    covered |= {CONFIGS / "optimize.yaml"}  # test_optimize_config_composes
    covered |= {CONFIGS / "bench.yaml", *(CONFIGS / "bench" / f"{p}.yaml" for p in BENCH_PRESETS)}
    covered |= {CONFIGS / "data/loader/default.yaml"}  # included by every data option
    covered |= {CONFIGS / "profile.yaml"}  # test_profile_config_extends_train
    covered |= {CONFIGS / "tune.yaml"}  # tests/test_tune.py
    covered |= {CONFIGS / "hydra/launcher/slurm.yaml"}  # tests/test_sweep.py
    assert set(CONFIGS.rglob("*.yaml")) == covered


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_option_composes_and_instantiates(
    compose_train: ComposeTrain, image_folder: Path, group: str, option: str
) -> None:
    extra = [f"data.root={image_folder}"] if (group, option) == ("data", "imagefolder") else []
    cfg = compose_train(f"{group}={option}", *extra)
    check_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    if group == "data" or group == "experiment":
        datamodule = instantiate(cfg.data)
        assert len(datamodule.input_shape) == 3 and datamodule.num_classes >= 2
    if group in ("model", "optimizer", "scheduler", "experiment"):
        model = instantiate(cfg.model, input_shape=(1, 28, 28), num_classes=10)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        optimizers = model.configure_optimizers()
        optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
        assert isinstance(optimizer, torch.optim.Optimizer)
    if group == "strategy":
        strategy = build_strategy(cfg.strategy.name, cfg.strategy.options)
        assert strategy == option
    if group == "callbacks":
        callbacks = instantiate_all(cfg.get("callbacks"), instantiate)
        assert len(callbacks) == {"none": 0, "default": 3, "early_stopping": 4}[option]
    if group == "logger":
        loggers = instantiate_all(cfg.get("logger"), instantiate)
        assert [type(lg).__name__.removesuffix("Logger").lower() for lg in loggers] == (
            [] if option == "none" else [option]
        )
    if group == "profiler":
        from lightning.pytorch.profilers import AdvancedProfiler, SimpleProfiler

        from perfkit.profiling import TorchProfiler

        profiler = instantiate(cfg.profiler) if cfg.get("profiler") else None
        expected = {
            "none": type(None),
            "simple": SimpleProfiler,
            "advanced": AdvancedProfiler,
            "pytorch": TorchProfiler,
        }
        assert type(profiler) is expected[option]
    if group in ("trainer", "debug", "experiment"):
        trainer = instantiate(cfg.trainer, strategy=build_strategy(cfg.strategy.name), logger=False)
        expected_epochs = 1 if cfg.trainer.fast_dev_run else cfg.trainer.max_epochs
        assert trainer.max_epochs == expected_epochs


@pytest.mark.parametrize("preset", BENCH_PRESETS)
def test_bench_presets_compose_and_validate(preset: str) -> None:
    from perfkit.bench.catalog import preset as variants_of
    from perfkit.bench.suite import bench_config
    from perfkit.bench.variants import MODELS
    from perfkit.config import compose_config

    cfg = compose_config("bench", [f"bench={preset}"])
    spec = bench_config(cfg)
    assert set(spec.models) <= set(MODELS)
    if preset == "serve":  # the variants a server would ship, and the formats it loads
        assert spec.modes == ["serve"] and spec.devices == ["cpu"] and spec.models == list(MODELS[:4])
        assert set(spec.variants) <= set(variants_of("classic")) and "aoti" in spec.exports
        return
    # each preset covers its whole variant matrix
    assert spec.variants == list(variants_of("gpu" if preset == "gpu" else "classic"))
    assert set(spec.modes) == {"inference", "train"}
    if preset == "gpu":
        assert (
            spec.models == ["resnet50", "vit_b_16"] and spec.batch_sizes == [256] and spec.image_size == 224
        )
    if preset == "full":
        assert spec.models == list(MODELS[:4]) and spec.batch_sizes == [1, 64, 256]


def test_optimize_config_composes(tmp_path: Path) -> None:
    from perfkit.config import compose_config

    cfg = compose_config("optimize", [f"ckpt_path={tmp_path}/x.ckpt", "paths.output_dir=out"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["prune"]["method"] == "channels" and resolved["benchmark"]["threads"] == 1  # type: ignore[index]


def test_profile_config_extends_train(tmp_path: Path) -> None:
    from perfkit.profiling import TorchProfiler

    cfg = compose_config("profile", ["model=resnet18", "strategy=ddp", "devices=2"])
    assert cfg.task_name == "profile" and cfg.model.net._target_.endswith("resnet18")
    assert cfg.strategy.name == "ddp" and cfg.devices == 2
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path))
    check_config(cfg)
    profiler = instantiate(cfg.profiler)
    assert isinstance(profiler, TorchProfiler) and profiler.stop_when_done
    assert profiler.steps_needed == 10 and cfg.trainer.max_epochs == 1


def test_several_loggers_at_once(compose_train: ComposeTrain) -> None:
    cfg = compose_train("logger=[tensorboard,wandb,csv]")
    names = sorted(type(lg).__name__ for lg in instantiate_all(cfg.logger, instantiate))
    assert names == ["CSVLogger", "TensorBoardLogger", "WandbLogger"]


def test_shortcuts_reach_the_trainer(compose_train: ComposeTrain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_RANK", "0")  # as the second node's launcher sets it
    cfg = compose_train("strategy=ddp", "devices=4", "accelerator=cpu", "precision=bf16-mixed", "num_nodes=2")
    assert cfg.strategy.name == "ddp"
    assert (cfg.trainer.devices, cfg.trainer.accelerator) == (4, "cpu")
    assert (cfg.trainer.precision, cfg.trainer.num_nodes) == ("bf16-mixed", 2)
    check_config(cfg)


def test_experiment_overrides_groups(compose_train: ComposeTrain) -> None:
    cfg = compose_train("experiment=digits_mlp")
    assert cfg.data._target_.endswith("DigitsDataModule")
    assert cfg.model.net._target_.endswith("MLP")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not valid: expected int"),
        ("devices=-3", "devices=-3 is not valid"),
        ("devices=0", "devices=0 is not valid"),
        ("devices=[0,0]", "devices=[0, 0] is not valid"),
        ("num_nodes=0", "num_nodes=0 is not valid"),
        ("accelerator=tpuu", "allowed: auto, cpu, cuda, gpu"),
        ("strategy.name=horovod", "strategy.name='horovod' is not valid; allowed: auto"),
        (
            "precision=bf17",
            "trainer.precision='bf17' is not valid; allowed: 64, 32, 16, transformer-engine",
        ),
        ("seed=abc", "seed='abc' is not valid"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt' is not a file"),
        ("optimize.prune.amount=1.5", "optimize.prune.amount=1.5 is not valid: use a number in [0, 1)"),
        ("optimize.prune.method=l3", "optimize.prune.method='l3' is not valid; allowed: l1_unstructured"),
        ("optimize.prune.at_epoch=-1", "optimize.prune.at_epoch=-1 is not valid"),
        ("optimize.compile=maybe", "optimize.compile='maybe' is not valid: use true or false"),
        ("optimize.compile_mode=fast", "optimize.compile_mode='fast' is not valid; allowed: default"),
        ("data=imagefolder", "missing required value(s): data.root"),
        (
            "+trainer.foo=1",
            "trainer.foo: lightning.pytorch.Trainer has no parameter 'foo'; allowed: accelerator",
        ),
        ("data.batch_size=abc", "data.batch_size='abc' is not valid: expected int"),
        ("model.net.hidden=wide", "model.net.hidden='wide' is not valid"),
        ("data._target_=perfkit.data.Nope", "data._target_: cannot import 'perfkit.data.Nope'"),
    ],
)
def test_bad_values_raise_one_clear_line(compose_train: ComposeTrain, override: str, message: str) -> None:
    cfg = compose_train(override)
    with pytest.raises(ConfigError) as raised:
        check_config(cfg)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("devices", [1, 4, -1, "auto", "2", "0,1", [0, 1]])
def test_valid_device_specs_pass(compose_train: ComposeTrain, devices: object) -> None:
    cfg = compose_train()
    cfg.devices = devices
    check_config(cfg)


def test_keys_forwarded_to_a_base_class_are_checked() -> None:
    # SyntheticDataModule forwards **loader_options to ClassificationDataModule: typos still fail
    node = OmegaConf.create({"_target_": "perfkit.data.SyntheticDataModule", "batchsize": 3})
    with pytest.raises(ConfigError, match=r"has no parameter .batchsize.; allowed: num_samples.*batch_size"):
        check_node(node, "data")
    check_node(OmegaConf.create({"_target_": "perfkit.data.SyntheticDataModule", "batch_size": 3}), "data")


def test_user_targets_with_var_keywords_accept_any_key() -> None:
    node = OmegaConf.create({"_target_": "builtins.dict", "anything": 1})
    check_node(node, "custom")


def test_a_source_checkout_finds_its_configs_without_the_package_mapping() -> None:
    """The lent GPU machines run perfkit from the checkout on PYTHONPATH, where ``perfkit.configs``
    (mapped onto configs/ by the install) does not exist."""
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[1]
    program = textwrap.dedent(
        """
        import importlib.abc, sys
        class NoMapping(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "perfkit.configs":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, NoMapping())
        from perfkit.config import config_dir
        print(config_dir())
        """
    )
    shown = subprocess.run(
        [sys.executable, "-c", program], cwd=root, capture_output=True, text=True, check=True
    )
    assert Path(shown.stdout.strip()) == root / "configs"
