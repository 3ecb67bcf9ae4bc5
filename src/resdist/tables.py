"""The one markdown table writer every report uses (profile, INT8, suites, demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, columns padded to their widest cell.

    Args:
        headers: the column titles.
        rows: one sequence of cells per row, as many as ``headers``; cells are shown with
            ``str()``.

    Returns:
        The table's lines joined by newlines, without a trailing newline.
    """
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    assert all(len(row) == len(cells[0]) for row in cells), "a row's cells do not fit the headers"
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])
