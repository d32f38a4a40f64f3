"""What every perfkit report shares: data first (``to_dict``, saved as JSON), then the views
(``to_markdown``; a plot where one reads better), written together by ``save``; and the one
Markdown table writer they all use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from perfkit.run import write_json


@runtime_checkable
class Report(Protocol):
    """A result of a perfkit command or function: the bench report, a run's metrics, the tune
    result, optimize's comparison, the step profile and the serving report all follow it."""

    def to_dict(self) -> dict[str, Any]:
        """The data, JSON-ready, environment and settings included."""
        ...

    def to_markdown(self) -> str:
        """The report for people."""
        ...

    def save(self, directory: Path) -> list[Path]:
        """Write the JSON and its views into ``directory``; returns the files written."""
        ...


@dataclass
class DictReport:
    """A report whose data is a JSON-ready dict, saved as ``<name>.json`` beside its ``<name>.md``;
    a subclass names the files and renders the Markdown."""

    data: dict[str, Any]
    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def to_markdown(self) -> str:
        raise NotImplementedError

    def save(self, directory: Path) -> list[Path]:
        written = [Path(directory) / f"{self.name}.json", Path(directory) / f"{self.name}.md"]
        write_json(written[0], self.data)
        text = self.to_markdown()
        written[1].write_text(text if text.endswith("\n") else text + "\n")
        return written


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()
) -> list[str]:
    """The lines of a GitHub Markdown table; columns whose index is in ``right`` are right-aligned
    (numbers). A cell's ``|`` is escaped and its line breaks become spaces, so a free-text reason
    cannot break the table."""
    aligned = set(right)
    marks = ("---:" if index in aligned else "---" for index in range(len(header)))
    return [_line(header), "|" + "|".join(marks) + "|", *(_line(row) for row in rows)]


def _line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(" ".join(str(cell).split()).replace("|", "\\|") for cell in cells) + " |"


def pyplot() -> Any:
    """matplotlib drawing off-screen (servers and CI have no display)."""
    import matplotlib  # only when a plot is drawn: it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
