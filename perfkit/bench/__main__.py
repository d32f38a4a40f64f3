"""``python -m perfkit.bench [overrides]`` runs the matrix; ``python -m perfkit.bench compare A B`` gates."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from perfkit.config import ConfigError, check_output_dir_overrides, config_dir, error_line


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="bench")
def _hydra_main(cfg: DictConfig) -> None:
    from perfkit.bench.suite import run_bench

    try:
        report = run_bench(cfg)
    except (ConfigError, ValueError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"perfkit.bench: error: {error_line(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            f"perfkit.bench: interrupted; finished rows are in {cfg.paths.output_dir}/report.json",
            file=sys.stderr,
        )
        sys.exit(130)
    print(report.to_markdown())
    print(f"\nreport: {cfg.paths.output_dir}/report.md (data: report.json, plots: *.png)")


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        from perfkit.bench.compare import main as compare

        sys.exit(compare(sys.argv[2:]))
    check_output_dir_overrides("perfkit.bench")
    _hydra_main()


if __name__ == "__main__":
    main()
