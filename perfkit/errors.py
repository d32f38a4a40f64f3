"""The exception every perfkit check raises for a user's mistake (in its own module: every layer uses it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line naming the key and what is allowed."""


class Interrupted:
    """Whether Ctrl-C stopped a Lightning run in this process: Lightning turns the
    ``KeyboardInterrupt`` into ``sys.exit(1)``, so the runner asks here to report it as one (130)."""

    seen = False


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
