"""``python -m perfkit.tune [group=option ...] [key=value ...]``: the tuner on a composed training config.

Builds the datamodule and model exactly as ``perfkit.train`` would, runs :class:`perfkit.tune.Tuner`
within ``tune.budget_s``, and writes ``tune.json``, ``tune.md``, ``tune.png`` and
``configs/experiment/tuned.yaml`` into the run directory.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from perfkit.config import ConfigError, check_config, check_output_dir_overrides, config_dir, error_line

log = logging.getLogger("perfkit.tune")


def run(cfg: DictConfig) -> Any:
    """Tune the job ``cfg`` describes; return the :class:`~perfkit.tune.TuneResult`."""
    check_config(cfg)
    import lightning as L
    from hydra.utils import instantiate

    from perfkit.run import RunDirectory
    from perfkit.train import _shapes_for
    from perfkit.tune import Tuner, TuneSettings, progress_bar, write_outputs

    values: dict[str, Any] = OmegaConf.to_container(cfg.tune, resolve=True)  # type: ignore[assignment]
    unknown = sorted(set(values) - set(TuneSettings.__dataclass_fields__))
    if unknown:
        allowed = ", ".join(TuneSettings.__dataclass_fields__)
        raise ConfigError(f"unknown tune option(s) {', '.join(unknown)}; allowed: {allowed}")
    settings = TuneSettings(**values)
    try:
        settings.check()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    run_dir = Path(cfg.paths.output_dir)
    RunDirectory(run_dir, precious=("tune.json",))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, **_shapes_for(cfg.model, datamodule))
    with progress_bar() as report_progress:
        result = Tuner(model, datamodule, settings, progress=report_progress).run()
    written = write_outputs(result, run_dir)
    for mode, keys in result.chosen.items():
        final = result.final.get(mode)
        measured = f" ({final.speedup:.2f}x the defaults, side by side)" if final and final.speedup else ""
        log.info("%s: %s%s", mode, keys or "keep the defaults", measured)
    log.info(
        "report: %s; train with: python -m perfkit.train --config-dir %s experiment=tuned",
        written[1],
        run_dir / "configs",
    )
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="tune")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"perfkit.tune: error: {error_line(error)}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    check_output_dir_overrides("perfkit.tune")
    _hydra_main()


if __name__ == "__main__":
    main()
