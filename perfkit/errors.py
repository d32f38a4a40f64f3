"""The exception every perfkit check raises for a user's mistake, and the one-line renderings of errors
(in their own module: every layer uses them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line naming the key and what is allowed."""


def first_line(error: BaseException, *, limit: int | None = None, typed: bool = False) -> str:
    """The first line of an error's message, cut to ``limit`` characters; the exception's type name
    when it has no message. ``typed``: prefixed with the type name (``ValueError: ...``; ``RuntimeError:
    no message`` for a bare ``raise RuntimeError``)."""
    text = str(error).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if typed:
        return f"{type(error).__name__}: {line or 'no message'}"
    return line or type(error).__name__


def error_line(error: BaseException) -> str:
    """One readable line for a configuration or construction error (Hydra wraps the latter)."""
    from hydra.errors import InstantiationException  # Hydra only where an error is being reported

    if isinstance(error, InstantiationException):
        cause = error.__cause__ or error
        key = next(
            (line.split(":", 1)[1].strip() for line in str(error).splitlines() if "full_key:" in line), ""
        )
        message = first_line(cause)
        return f"{key}: {message}" if key else message
    text = str(error)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the worker's own message
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


class Interrupted:
    """Whether Ctrl-C stopped a Lightning run in this process: Lightning turns the
    ``KeyboardInterrupt`` into ``sys.exit(1)``, so the runner asks here to report it as one (130)."""

    seen = False


def is_interrupt(error: BaseException) -> bool:
    """A Ctrl-C: the ``KeyboardInterrupt`` itself, or the ``sys.exit(1)`` Lightning turns it into."""
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, SystemExit) and error.code == 1 and Interrupted.seen
    )


@contextlib.contextmanager
def noting_ctrl_c() -> Iterator[None]:
    """Within the block, a Ctrl-C sets :attr:`Interrupted.seen` before it raises, so that the exit
    Lightning makes of it is still known as one (:func:`is_interrupt`)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: Any) -> None:
        Interrupted.seen = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# the disk (or a quota, or the file-size limit) is full, or the file system is read-only
STORAGE_ERRNOS = frozenset({28, 27, 122, 30})  # ENOSPC, EFBIG, EDQUOT, EROFS


def storage_fault(error: BaseException) -> str | None:
    """One line for a write that failed because the storage is full or read-only; None for other errors."""
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRNOS:
        return None
    what = f"cannot write {error.filename}" if error.filename else "cannot write a file"
    return (
        f"{what}: {error.strerror}; files written before are intact (each is written to a temporary file "
        "first): free space or raise the limit, or choose another paths.log_dir=..."
    )


def user_frame(error: BaseException) -> str | None:
    """``userpkg/data.py:42 in setup``: the innermost frame of ``error``'s traceback in code that is
    neither perfkit's, a library's nor Python's own; None when there is none (a perfkit or library
    fault keeps its traceback)."""
    import sysconfig
    import traceback
    from pathlib import Path

    ours = str(Path(__file__).resolve().parent)
    libraries = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(("<", ours, *libraries))
    ]
    if not frames:
        return None
    frame = frames[-1]
    shown = Path(frame.filename)
    with contextlib.suppress(ValueError):  # outside the working directory: the full path
        shown = shown.resolve().relative_to(Path.cwd())
    return f"{shown}:{frame.lineno} in {frame.name}"


def worker_fault(error: BaseException) -> str | None:
    """One line for a DataLoader worker that died (torch: "DataLoader worker (pid 123) is killed by
    signal: Killed.", "DataLoader worker (pid(s) 123) exited unexpectedly"): the machine's doing, not
    a bug to show a traceback for."""
    import re

    text = str(error)
    pids = re.search(r"DataLoader worker \(pid(?:\(s\))? ?([\d, ]+)\)", text)
    if not isinstance(error, RuntimeError) or pids is None:
        return None
    signal = re.search(r"killed by signal: (\w+)", text)
    how = f"killed by signal {signal.group(1)}" if signal else "exited unexpectedly"
    if signal and signal.group(1) == "Killed":
        how += ", usually the out-of-memory killer"
    return (
        f"a DataLoader worker (pid {pids.group(1).strip()}) died ({how}): use fewer data.num_workers or a "
        "smaller data.batch_size, or free memory; checkpoints written before are kept"
    )
