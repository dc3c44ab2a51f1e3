"""A plain aligned text table: what `runner list`, `--dry-run`, `history` and `blame`
print (its own room, so the light commands need not import `runner check`)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if TYPE_CHECKING:
    from typing import TextIO


def print_table(columns: list[str], rows: list[list[str]], out: TextIO) -> None:
    """A clean aligned text table with a header."""
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    for line in [columns, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
