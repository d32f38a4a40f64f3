"""``python -m perfkit.bench [overrides]`` runs the matrix; ``python -m perfkit.bench compare A B`` gates."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from perfkit.cli import command, run_program


def bench(cfg: DictConfig) -> None:
    """Measure the matrix ``cfg.bench`` describes and print the report."""
    # here, not at the top: `python -m perfkit.bench --help` answers before torch loads
    from perfkit.bench.suite import run_bench

    report = run_bench(cfg)
    print(report.to_markdown())
    print(f"\nreport: {cfg.paths.output_dir}/report.md (data: report.json, plots: *.png)")


_bench_command = command("perfkit.bench", "bench", bench, user_errors=(ValueError,))


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        # here, not at the top: `python -m perfkit.bench --help` answers before torch loads
        from perfkit.bench.compare import main as compare

        sys.exit(compare(sys.argv[2:]))
    _refuse_user_models(sys.argv[1:])
    _bench_command()


def _refuse_user_models(args: list[str]) -> None:
    """``model=``/``data=`` are train's keys: say where a user's own model is benchmarked instead of
    Hydra's "Key 'model' is not in struct"."""
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0].split("/", 1)[0] in ("model", "data"):
            print(
                f"perfkit.bench: error: {arg}: perfkit.bench measures its own benchmark models "
                "(bench.models=[cnn,mlp,resnet18,vit], bench.data=...); for your own module use "
                "python -m perfkit.optimize ckpt_path=RUN/checkpoints/best.ckpt (its variants, scored by its "
                "own steps) or python -m perfkit.tune model._target_=... data._target_=... (see --help)",
                file=sys.stderr,
            )
            sys.exit(2)


if __name__ == "__main__":
    run_program(main)
