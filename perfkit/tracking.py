"""Weights & Biases around perfkit's runs: offline unless asked, never prompting, reports as artifacts.

Training logs to W&B through Lightning's ``WandbLogger`` (``logger=wandb`` or
``logger=[tensorboard,wandb]``); this module adds what Lightning leaves out: a one-line refusal of an
online run that has no API key (wandb would otherwise prompt or fail deep inside ``wandb.init``), the
run's files as a ``report`` artifact, and the same for ``perfkit.bench`` (``wandb.enabled=true``).

The API key is only ever read from the environment or ``~/.netrc`` by wandb itself; perfkit never
copies it into configs, logs or files.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from perfkit.errors import ConfigError

log = logging.getLogger(__name__)

_WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
_WANDB_HOST = "api.wandb.ai"


def api_key_available() -> bool:
    """Whether wandb could authenticate without prompting (``WANDB_API_KEY`` or a ``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(_WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def forced_offline() -> bool:
    """``WANDB_MODE=offline`` or ``disabled`` overrides any config."""
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")


def check_online_wandb(offline: bool, key: str) -> None:
    """Refuse an online W&B run that would prompt for a key."""
    check_wandb_mode()
    if not offline and not forced_offline() and not api_key_available():
        raise ConfigError(
            f"{key}=false needs a W&B API key (set WANDB_API_KEY or run `wandb login`); or keep it true: the "
            "run is written offline and `wandb sync <run dir>/wandb/offline-run-*` uploads it later"
        )


_WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def check_wandb_mode() -> None:
    """An empty ``WANDB_MODE`` means unset (as for any Unix variable); an unknown one is refused."""
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and not mode.strip():
        del os.environ["WANDB_MODE"]
    elif mode is not None and mode.lower() not in _WANDB_MODES:
        raise ConfigError(
            f"WANDB_MODE={mode!r} is not valid; allowed: online, offline, disabled (or unset it)"
        )


def wandb_reachable(timeout_s: float = 3.0) -> bool:
    """Whether W&B's server (``WANDB_BASE_URL``, default api.wandb.ai) accepts a connection: wandb itself
    retries for minutes before failing with a traceback."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or f"https://{_WANDB_HOST}")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or _WANDB_HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_loggers(logger_cfg: DictConfig | None) -> None:
    """:func:`check_online_wandb` for every ``WandbLogger`` in the ``logger`` group; an online logger
    whose server can't be reached logs offline instead, with a warning (``wandb sync`` uploads later)."""
    check_wandb_mode()
    if not logger_cfg:
        return
    for name, node in logger_cfg.items():
        if isinstance(node, DictConfig) and node.get("_target_") == _WANDB_LOGGER:
            offline = bool(node.get("offline", False))
            check_online_wandb(offline, f"logger.{name!s}.offline")
            if not offline and not forced_offline() and not wandb_reachable():
                log.warning(
                    "W&B server unreachable: logging offline instead (upload later with `wandb sync <run "
                    "dir>/wandb/offline-run-*`)"
                )
                node.offline = True


def log_report_artifact(
    run: Any, name: str, files: Iterable[Path], metadata: Mapping[str, Any] | None = None
) -> None:
    """Attach the existing ``files`` to the W&B ``run`` as one artifact of type ``report``.

    Offline, the artifact is stored in the offline run and uploaded by ``wandb sync``.
    """
    import wandb

    present = [path for path in files if path.is_file()]
    if not present:
        return
    artifact = wandb.Artifact(name=_artifact_name(name), type="report", metadata=dict(metadata or {}))
    for path in present:
        artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact)


def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "report"


def finish_training_runs(trainer: Any, run_dir: Path, files: Iterable[Path]) -> None:
    """On rank 0: attach the run's report files to each W&B run and close it (Lightning's
    ``WandbLogger`` leaves runs open, so offline files would be incomplete)."""
    from lightning.pytorch.loggers import WandbLogger

    if not trainer.is_global_zero:
        return
    files = list(files)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            log_report_artifact(run, f"{run_dir.name}-report", files, {"run_dir": str(run_dir)})
            run.finish()


def log_benchmark(
    report: Any,
    files: Iterable[Path],
    *,
    project: str,
    offline: bool,
    run_dir: Path,
    config: Mapping[str, Any],
) -> None:
    """Log a ``perfkit.bench`` report to W&B: its rows as a table, its headline numbers in the summary,
    and its files (JSON, Markdown, plots) as an artifact."""
    import wandb

    check_online_wandb(offline, "wandb.offline")
    if not offline and not forced_offline() and not wandb_reachable():
        log.warning(
            "W&B server unreachable: logging the report offline instead (upload later with `wandb sync`)"
        )
        offline = True
    run = wandb.init(
        project=project,
        name=f"bench-{run_dir.name}",
        dir=str(run_dir),
        mode="offline" if offline or forced_offline() else "online",
        config={**config, "system": report.environment},
        job_type="benchmark",
        settings=wandb.Settings(silent=True),
    )
    try:
        rows = [row.__dict__ for row in report.rows]
        if rows:
            columns = list(rows[0])
            run.log(
                {
                    "report": wandb.Table(
                        columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows]
                    )
                }
            )
        for row in report.rows:
            if row.ok and row.speedup is not None:
                run.summary[
                    f"speedup/{row.device}/{row.mode}/b{row.batch_size}/{row.model}/{row.variant}"
                ] = row.speedup
        log_report_artifact(run, f"bench-{run_dir.name}", files, {"complete": report.complete})
    finally:
        run.finish()
    log.info("W&B: logged the report %s", "offline (upload with `wandb sync`)" if offline else "online")


def _cell(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
