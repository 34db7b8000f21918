"""Markdown building blocks shared by the generated pages: table cells and GitHub tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from replication.runner import format_stats


def cell(value: Any) -> str:
    """One table cell: stats as ``mean ± std``, floats to 4 significant digits, ``|`` escaped."""
    if isinstance(value, Mapping) and {"mean", "std", "n"} <= set(value):
        return format_stats(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines
