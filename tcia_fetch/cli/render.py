"""Output of ``tcia-fetch query``: a rich table, JSON, JSON Lines or CSV.

Server text is untrusted: a table shows it as plain text (never rich markup) with control
characters as visible escapes, JSON escapes them too, and CSV cells get both that and a leading
``'`` before anything a spreadsheet would evaluate as a formula (cli/_show.py, untrusted.py).

Rows are dicts keyed as the server names them (``server_dict()``), so JSON output is the
server's own rows, and CSV/JSON Lines are lossless views of the same data. Column choice:
``columns`` when the user gave ``--columns``; else the command's defaults for a table and
every key (in server order of first appearance) for CSV. JSON output keeps whole rows
unless ``--columns`` narrows them.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, TextIO

from rich.console import Console
from rich.table import Table

from tcia_fetch.cli._show import cell, json_text, shown
from tcia_fetch.errors import InputError
from tcia_fetch.untrusted import spreadsheet_cell

__all__ = ["OutputFormat", "all_columns", "check_columns", "parse_columns", "render_rows"]

OutputFormat = Literal["table", "json", "jsonl", "csv"]


def parse_columns(text: str | None) -> list[str] | None:
    """Split ``--columns a,b`` into names; None when not given."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError("no column names given", source="--columns")
    return names


def all_columns(rows: Iterable[Mapping[str, object]]) -> list[str]:
    """Every key of ``rows``, in order of first appearance (the server's column order)."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict | list | bool) else str(value)


def _csv_cell(value: object) -> str:
    """A CSV cell of server text: controls shown as escapes, formulas defused (untrusted.py).

    Numbers the server sent as JSON numbers are ours to print and stay numbers; a server
    *string* that looks like a formula gets the leading ``'`` spreadsheets expect.
    """
    text = _cell(value)
    if not isinstance(value, str):
        return text
    return spreadsheet_cell(shown(text, keep_newlines=True))


def check_columns(columns: Sequence[str], rows: Sequence[Mapping[str, object]], known: Iterable[str]) -> None:
    """Refuse a ``--columns`` name that neither the rows nor the endpoint has."""
    available = set(known) | set(all_columns(rows))
    unknown = [name for name in columns if name not in available]
    if unknown:
        raise InputError(
            f"unknown column {unknown[0]!r} (available: {', '.join(sorted(available)) or 'none'})",
            source="--columns",
        )


def render_rows(
    rows: Sequence[Mapping[str, object]],
    *,
    output_format: OutputFormat,
    columns: Sequence[str] | None,
    default_columns: Sequence[str],
    known_columns: Iterable[str] = (),
    title: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Write ``rows`` to ``stream`` (stdout by default) in ``output_format``.

    Raises:
        InputError: ``columns`` names a column that neither the rows nor the endpoint has.
    """
    out = stream if stream is not None else sys.stdout
    if columns is not None:
        check_columns(columns, rows, known_columns)
    if output_format == "json":
        payload = [dict(row) if columns is None else {k: row[k] for k in columns if k in row} for row in rows]
        out.write(json_text(payload) + "\n")
        return
    if output_format == "jsonl":
        for row in rows:
            selected = dict(row) if columns is None else {k: row[k] for k in columns if k in row}
            out.write(json_text(selected, indent=None) + "\n")
        return
    if output_format == "csv":
        chosen = list(columns) if columns is not None else all_columns(rows)
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow([_csv_cell(name) for name in chosen])
        for row in rows:
            writer.writerow([_csv_cell(row.get(name)) for name in chosen])
        return
    chosen = (
        list(columns) if columns is not None else [c for c in default_columns if any(c in r for r in rows)]
    )
    if not chosen:
        chosen = all_columns(rows)
    table = Table(title=title, show_lines=False, header_style="bold")
    for name in chosen:
        table.add_column(cell(name), overflow="fold")
    for row in rows:
        table.add_row(*(cell(_cell(row.get(name))) for name in chosen))
    console = Console(file=out, width=None if out.isatty() else 240, highlight=False, soft_wrap=False)
    console.print(table)
    console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", style="dim")
