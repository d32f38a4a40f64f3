"""The exception every perfkit check raises for a user's mistake (in its own module: every layer uses it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line naming the key and what is allowed."""


class Interrupted:
    """Whether Ctrl-C stopped a Lightning run in this process: Lightning turns the
    ``KeyboardInterrupt`` into ``sys.exit(1)``, so the runner asks here to report it as one (130)."""

    seen = False
