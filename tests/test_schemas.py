"""perfkit.schemas: the typed optimize, bench and tune nodes, the single source of their defaults and
choices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from perfkit.config import ConfigError, build_typed, compose_config, typed_node, typed_root
from perfkit.schemas import Bench, BenchVariant, PostTraining, TrainOptimize, Tune, choices


def test_the_variant_choices_are_the_variants_perfkit_builds() -> None:
    from perfkit.bench.variants import VARIANTS

    assert choices(BenchVariant) == tuple(VARIANTS)


@pytest.mark.parametrize(("config", "node", "schema"), [("train", "optimize", TrainOptimize),
                                                        ("tune", "tune", Tune), ("bench", "bench", Bench)])  # fmt: skip
def test_composed_defaults_are_the_schema_defaults(config: str, node: str, schema: type) -> None:
    cfg = compose_config(config, [])
    assert typed_node(cfg, node) == schema()  # the YAML files add no second default


def test_the_optimize_commands_root_keys_are_the_schema_defaults(tmp_path: Path) -> None:
    cfg = compose_config("optimize", [f"ckpt_path={tmp_path}/x.ckpt"])
    assert typed_root(cfg, PostTraining) == PostTraining()
    with pytest.raises(ConfigError, match=r"^prune.method='l3' is not valid; allowed: l1_unstructured"):
        typed_root(compose_config("optimize", ["ckpt_path=x", "prune.method=l3"]), PostTraining)


def test_nested_nodes_lists_and_coercion() -> None:
    typed = build_typed(
        TrainOptimize, {"compile": True, "prune": {"amount": 0.25, "method": "channels"}}, "optimize"
    )
    assert typed.compile and typed.prune.amount == 0.25 and typed.prune.at_epoch == 1
    assert build_typed(Bench, {"models": "vit", "train_epochs": 0}, "bench").models == ["vit"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prune": {"amount": 1.5}}, "optimize.prune.amount=1.5 is not valid: use a number in [0, 1)"),
        (
            {"prune": {"how": "l1"}},
            "optimize.prune: unknown option(s) how; allowed: amount, method, at_epoch",
        ),
        (
            {"compile_mode": "fastest"},
            "optimize.compile_mode='fastest' is not valid; allowed: default, reduce-overhead",
        ),
    ],
)
def test_errors_name_the_full_key_and_what_is_allowed(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_typed(TrainOptimize, values, "optimize")
    assert str(error.value).startswith(message)


def test_models_without_a_training_config_need_random_weights() -> None:
    with pytest.raises(ValueError, match="resnet50 have no training config: use train_epochs=0"):
        Bench(models=["resnet50"])
    assert Bench(models=["resnet50"], train_epochs=0).cells_per_model == 4
    assert dataclasses.replace(Bench(), image_size=32).data_overrides == ["data.image_size=32"]
