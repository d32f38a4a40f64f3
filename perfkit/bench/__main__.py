"""``python -m perfkit.bench [overrides]`` runs the matrix; ``python -m perfkit.bench compare A B`` gates."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from perfkit.cli import command, run_program


def bench(cfg: DictConfig) -> None:
    """Measure the matrix ``cfg.bench`` describes and print the report."""
    from perfkit.bench.suite import run_bench

    report = run_bench(cfg)
    print(report.to_markdown())
    print(f"\nreport: {cfg.paths.output_dir}/report.md (data: report.json, plots: *.png)")


_bench_command = command("perfkit.bench", "bench", bench, user_errors=(ValueError,))


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        from perfkit.bench.compare import main as compare

        sys.exit(compare(sys.argv[2:]))
    _bench_command()


if __name__ == "__main__":
    run_program(main)
