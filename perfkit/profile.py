"""``python -m perfkit.profile``: the command's name; the program is :mod:`perfkit.profiling.__main__`."""

from __future__ import annotations

from perfkit.cli import run_program
from perfkit.profiling.__main__ import PROGRAM, main, profile_run, report_traces

__all__ = ["PROGRAM", "main", "profile_run", "report_traces"]

if __name__ == "__main__":
    run_program(main)
