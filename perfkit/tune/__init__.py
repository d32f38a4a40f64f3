"""``perfkit.tune``: pick the fastest configuration for the user's model and hardware, by measurement.

    python -m perfkit.tune model=resnet18 data=mnist tune.budget_s=300

    import perfkit
    result = perfkit.tune(my_lightning_module, my_datamodule, budget_s=120)
    result.chosen  # {"train": {"precision": "bf16-mixed", ...}, "inference": {...}}

The module itself is callable (``perfkit.tune(...)``), so the same name serves the command line and
the library.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from perfkit.config import build_typed
from perfkit.errors import noting_ctrl_c
from perfkit.tune.candidates import Candidate
from perfkit.tune.report import TuneResult, write_outputs
from perfkit.tune.selection import (
    Budget,
    Outcome,
    TuneInterrupted,
    decide,
    pick,
    run_within_budget,
)
from perfkit.tune.tuner import Tuner, TuneSettings

__all__ = [
    "Budget",
    "Candidate",
    "Outcome",
    "TuneResult",
    "TuneSettings",
    "Tuner",
    "decide",
    "pick",
    "run_within_budget",
    "tune",
]


def tune(
    module: Any,
    datamodule: Any,
    *,
    output_dir: str | Path | None = None,
    progress: bool = True,
    monitor: str = "val/acc",
    monitor_mode: str = "max",
    **settings: Any,
) -> TuneResult:
    """Measure candidate settings for ``module`` (a LightningModule) on ``datamodule`` and choose.

    Training: DataLoader workers, batch size, precision, torch.compile modes (and channels_last for
    conv nets). Inference: batch size, compile modes, int8 dynamic quantization backends,
    channel pruning levels, bf16. Every candidate is timed side by side with the default; a gain must
    clear the 95% confidence interval, and settings that change numerics must keep held-out accuracy
    within ``max_accuracy_drop`` points after the same short run. Stops within ``budget_s`` seconds.
    With ``output_dir``, writes ``tune.json``, ``tune.md``, ``tune.png`` and
    ``configs/experiment/tuned.yaml``.

    ``monitor``/``monitor_mode``: the validation metric the module logs that candidates are judged
    by, and whether higher (max) or lower (min) is better.
    ``settings``: any key of :class:`perfkit.schemas.Tune` (``budget_s=300``, ``max_accuracy_drop=0.5``,
    ``modes=["train"]``, ``device="auto"``, ``rounds``, ...); the others keep its defaults.
    """

    _check_objects(module, datamodule)
    checked = build_typed(
        TuneSettings, {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "tune"
    )
    with progress_bar(enabled=progress) as report_progress, noting_ctrl_c():
        tuner = Tuner(
            module, datamodule, checked, progress=report_progress, monitor=monitor, monitor_mode=monitor_mode
        )
        try:
            result = tuner.run()
        except TuneInterrupted as stop:  # keep what was measured, then stop as a Ctrl-C does
            if output_dir is not None and stop.result is not None:
                write_outputs(stop.result, Path(output_dir))
            raise KeyboardInterrupt from None
    if output_dir is not None:
        write_outputs(result, Path(output_dir))
    return result


def _check_objects(module: Any, datamodule: Any) -> None:
    import lightning.pytorch as pl

    if not isinstance(module, pl.LightningModule):
        raise TypeError(
            f"perfkit.tune takes a LightningModule instance, not {type(module).__name__} ({module!r:.60}); "
            "from the command line, name classes with model._target_=... in python -m perfkit.tune"
        )
    if not isinstance(datamodule, pl.LightningDataModule):
        raise TypeError(
            f"perfkit.tune takes a LightningDataModule instance as datamodule, not {type(datamodule).__name__} "
            f"({datamodule!r:.60})"
        )


class progress_bar:  # noqa: N801 - used as a context manager, like tqdm
    """A tqdm bar over the candidates (the count is known once the tuner lists them)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> Any:
        from tqdm import tqdm

        self.bar = tqdm(
            desc="perfkit.tune", unit="candidate", disable=not self.enabled or None, dynamic_ncols=True
        )

        def update(outcome: Outcome) -> None:
            c = outcome.candidate
            self.bar.set_postfix_str(f"{c.mode} {c.axis}={c.name}: {outcome.status}")
            self.bar.update(1)

        return update

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> TuneResult:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
