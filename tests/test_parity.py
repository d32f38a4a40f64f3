"""benchmarks/parity.py: the hand-written baseline trains what perfkit trains, and the report adds up."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from hydra.utils import instantiate

from benchmarks import parity


def test_the_plain_loop_starts_from_perfkits_initial_weights() -> None:
    import lightning as L

    for job in parity.JOBS:
        cfg = parity.compose(job, "cpu", [])
        _, net = parity._build(cfg)
        # what perfkit.train does: seed, datamodule, then the model around the network
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model, input_shape=datamodule.input_shape, num_classes=datamodule.num_classes)
        reference = model.net.state_dict()
        assert reference.keys() == net.state_dict().keys()
        for name, tensor in net.state_dict().items():
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=f"{job}: {name}")


def test_one_round_reports_every_variant(tmp_path: Path) -> None:
    quick = ["debug=fast", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    result = parity.run_job("digits_mlp", torch.device("cpu"), rounds=2, extra=quick, workdir=tmp_path)
    assert set(result.runs) == set(parity.VARIANTS)
    for runs in result.runs.values():
        assert len(runs) == 2 and all(run.steps == 2 * 3 for run in runs)
        assert all(run.epoch_samples == [3 * 64, 3 * 64] for run in runs)
    summary = parity.summarise(result)
    for baseline in ("plain", "plain_resident"):
        comparison = summary[f"perfkit_vs_{baseline}"]
        assert comparison["ratio"] > 0 and math.isfinite(comparison["per_step_overhead_ms"])
        low, high = comparison["ci95"]
        assert low <= high
    for name in parity.VARIANTS:
        assert 0 <= summary[name]["test_acc"] <= 1 and summary[name]["samples_per_s"] > 0


def test_a_perfkit_variant_that_fails_is_left_out_and_named(tmp_path: Path) -> None:
    """On CUDA the parity run adds perfkit with CUDA graphs; if such a variant fails, the rest is
    still measured and the report says why it is missing."""
    quick = ["debug=fast", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    result = parity.run_job(
        "digits_mlp",
        torch.device("cpu"),
        rounds=2,
        extra=quick,
        workdir=tmp_path,
        perfkit_variants={
            "perfkit_no_fused": ["optimizer.fused=false"],
            "perfkit_diverges": ["optimizer.lr=1e12"],  # fails in training
            "perfkit_typo": ["optimizer.lrr=1"],  # fails in composing its config
        },
    )
    assert set(result.runs) == {*parity.VARIANTS, "perfkit_no_fused"}
    assert result.failed["perfkit_diverges"].startswith("DivergedError: training diverged")
    assert "lrr" in result.failed["perfkit_typo"]
    summary = parity.summarise(result)
    assert summary["perfkit_no_fused"]["vs_plain"]["ratio"] > 0
    assert summary["failed"] == result.failed
    notes = "\n".join(parity._variant_notes([summary]))
    assert "perfkit with `optimizer.fused=false`" in notes
    assert "perfkit with `optimizer.lr=1e12` failed: DivergedError" in notes
