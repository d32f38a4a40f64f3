"""perfkit.bench.catalog: the one list of benchmark variants, and what follows from it."""

from __future__ import annotations

import torch

from perfkit.bench import variants
from perfkit.bench.catalog import CATALOG, REGISTRY, preset
from perfkit.schemas import BenchVariant, choices


def test_every_record_is_complete_and_builds_through_its_named_builder() -> None:
    for record in CATALOG:
        assert callable(getattr(variants, record.builder, None)), record.name
        assert record.description and record.presets, record.name
        assert set(record.devices) <= {"cpu", "cuda"} and (
            record.elsewhere or record.devices == ("cpu", "cuda")
        )
    assert choices(BenchVariant) == tuple(REGISTRY) == tuple(variants.VARIANTS)


def test_presets_skips_and_precision_come_from_the_records() -> None:
    assert preset("classic")[:3] == ("eager", "compile", "bf16") and "handwritten" in preset("gpu")
    cpu = torch.device("cpu")
    assert variants.skip_reason("tf32", cpu, "inference") == REGISTRY["tf32"].elsewhere
    assert variants.skip_reason("int8_dynamic", cpu, "train") == REGISTRY["int8_dynamic"].inference_only
    assert variants.skip_reason("int8_dynamic", cpu, "inference") is None
    assert variants.precision_of("handwritten") == "bf16" and variants.precision_of("my_bf16") == "fp32"
    assert variants.precision_of("bf16_mine") == "bf16"  # a caller's own variant: by its name
