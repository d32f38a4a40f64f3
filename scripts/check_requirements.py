#!/usr/bin/env python3
"""Name perfkit's requirements (``pyproject.toml``) that this Python lacks or has at a wrong version.

    python scripts/check_requirements.py [PYPROJECT]

Prints one line per unmet requirement and exits 1 if there is any; prints nothing and exits 0 when all
are met. ``scripts/bench_gpu.sh`` runs it on a lent GPU machine, whose image lacks some packages
(``scripts/device_wheels.sh`` downloads them as wheels to carry there), so that a missing one is named
before a long run rather than as an ImportError half-way through it.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def unmet(requirements: list[str]) -> list[str]:
    """One line for each requirement that is not installed, or installed at a version it excludes."""
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name}: not installed (perfkit needs {requirement})")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name}: {installed} installed, perfkit needs {requirement}")
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else PYPROJECT
    requirements = tomllib.loads(path.read_text())["project"]["dependencies"]
    problems = unmet(requirements)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
