"""A small table that prints as aligned text (deterministic, for nbval) and renders as HTML in notebooks.
Results of measure, compare, distill and prune all show themselves through it."""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def format_value(value: Any) -> str:
    """Numbers in a stable, readable form: 12,345 / 0.9512 / 3.21x / '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


class Table:
    """Rows of cells under a header, with an optional title and footnotes."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "",
                 notes: Sequence[str] = ()):
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.title = title
        self.notes = list(notes)

    def to_text(self) -> str:
        cells = [self.columns] + [[format_value(v) for v in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        for index, row in enumerate(cells):
            lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += self.notes
        return "\n".join(lines)

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        title = f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        notes = "".join(f"<div style='font-size:90%'>{html.escape(n)}</div>" for n in self.notes)
        return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        return self.to_html()
