"""MkDocs hook: publish the committed benchmark plots, so the README's image links work on the site too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config: Any) -> Files:
    for image in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        files.append(
            File(
                str(image.relative_to(ROOT)),
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
