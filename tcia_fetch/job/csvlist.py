"""CSV/TSV tables with a ``SeriesInstanceUID`` column: spreadsheets, NBIA ``metadata.csv``.

The delimiter is taken from the header line (comma, tab or semicolon, whichever occurs most
outside quotes; a one-column header reads as comma-separated). The UID column is found by name:
``SeriesInstanceUID`` exactly, then the same without regard to case, spaces or underscores
(``Series Instance UID``), then ``Series UID`` (NBIA Data Retriever's ``metadata.csv``), then
``Series ID`` (NBIA's legacy metadata). Quoted fields, a byte-order mark and CRLF are fine.

Each row's UID goes through the same validation, de-duplication and strict/lenient problem
handling as a manifest line (:mod:`.uidlist`). A row with more non-empty fields than the header
is a problem, not a guess: an unquoted delimiter inside a description shifts every later column,
and taking "the UID column" of such a row could silently pick a StudyInstanceUID. The other
columns of each kept row stay available through :meth:`UidTable.row_for`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tcia_fetch.errors import InputError
from tcia_fetch.job.text import decode_input, excerpt, read_input_bytes, split_lines
from tcia_fetch.job.uidlist import DuplicateUid, LineProblem, UidCollector, raise_for_problems
from tcia_fetch.uid import is_valid_uid

__all__ = ["UID_COLUMN", "UidTable", "parse_uid_table", "parse_uid_table_bytes", "read_uid_table"]

UID_COLUMN = "SeriesInstanceUID"
#: Accepted column names after normalisation (lower case, no spaces or underscores), best first.
_COLUMN_PREFERENCE = ("seriesinstanceuid", "seriesuid", "seriesid")
_DELIMITERS = (",", "\t", ";")


@dataclass(frozen=True, slots=True)
class UidTable:
    """Distinct valid UIDs from a table, in row order, with their rows and what went wrong.

    ``uid_lines[i]`` is the (first physical) line of the row that gave ``uids[i]``. The other
    fields follow the manifest's :class:`~tcia_fetch.job.manifest.Manifest`.
    """

    source: str
    delimiter: str
    columns: tuple[str, ...]
    uid_column: str
    uids: tuple[str, ...]
    uid_lines: tuple[int, ...]
    duplicates: int
    duplicate_details: tuple[DuplicateUid, ...]
    problems: list[LineProblem]
    problem_count: int
    _rows: Mapping[str, tuple[str, ...]]

    def row_for(self, uid: str) -> dict[str, str]:
        """All columns of the first row that named ``uid`` (missing trailing cells read as "").

        Where the header repeats a column name, the leftmost column of that name is given.
        """
        values = self._rows[uid]
        row: dict[str, str] = {}
        for index, name in enumerate(self.columns):
            row.setdefault(name, values[index] if index < len(values) else "")
        return row

    def origins(self) -> Iterator[tuple[str, str]]:
        """``(uid, "file:line")`` for every UID, in order."""
        for uid, line in zip(self.uids, self.uid_lines, strict=True):
            yield uid, f"{self.source}:{line}"


def read_uid_table(path: Path, *, strict: bool = True) -> UidTable:
    """Read a CSV/TSV file; every failure is an InputError naming ``path``."""
    return parse_uid_table_bytes(read_input_bytes(path), source=str(path), strict=strict)


def parse_uid_table_bytes(data: bytes, *, source: str, strict: bool = True) -> UidTable:
    """Decode (UTF-8, optional BOM; see :mod:`.text`) and parse a table's raw bytes."""
    return parse_uid_table(decode_input(data, source=source), source=source, strict=strict)


def parse_uid_table(text: str, *, source: str, strict: bool = True) -> UidTable:
    """Parse table text; raise InputError for a missing column, no UIDs, or (strict) bad rows."""
    text = text.removeprefix("\ufeff")
    header_line = next((line for line in split_lines(text[: 64 * 1024]) if line.strip()), None)
    if header_line is None:
        raise InputError(
            "the file is empty; expected a header line with a SeriesInstanceUID column", source=source
        )
    delimiter = _sniff_delimiter(header_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    collector = UidCollector(source)
    rows: dict[str, tuple[str, ...]] = {}
    columns: tuple[str, ...] | None = None
    uid_index = 0
    previous_end = 0
    for row in _rows_with_errors(reader, source):
        first_line, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if columns is None:
            columns = tuple(cell.strip().lstrip("\ufeff") for cell in row)
            uid_index = _uid_column_index(columns, source, first_line)
            continue
        _take_row(row, first_line, columns, uid_index, collector, rows)
    if columns is None:
        raise InputError("no header line with a SeriesInstanceUID column", source=source)
    result = collector.result()
    if strict:
        raise_for_problems(result.problems, result.problem_count, source=source)
    if not result.uids:
        detail = f" ({result.problem_count} invalid rows skipped)" if result.problem_count else ""
        raise InputError(f"no series UIDs in column {columns[uid_index]!r}{detail}", source=source)
    return UidTable(
        source=source,
        delimiter=delimiter,
        columns=columns,
        uid_column=columns[uid_index],
        uids=result.uids,
        uid_lines=result.uid_lines,
        duplicates=result.duplicates,
        duplicate_details=result.duplicate_details,
        problems=result.problems,
        problem_count=result.problem_count,
        _rows={uid: rows[uid] for uid in result.uids},
    )


def _rows_with_errors(reader: Iterator[list[str]], source: str) -> Iterator[list[str]]:
    line_num = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_num = getattr(reader, "line_num", line_num)
            raise InputError(f"unreadable CSV: {exc}", source=source, location=str(line_num)) from None
        yield row


def _take_row(
    row: list[str],
    line: int,
    columns: tuple[str, ...],
    uid_index: int,
    collector: UidCollector,
    rows: dict[str, tuple[str, ...]],
) -> None:
    shown = ",".join(row)
    extra = [cell for cell in row[len(columns) :] if cell.strip()]
    if extra:
        collector.problem(
            line,
            shown,
            f"row has {len(row)} fields but the header has {len(columns)} "
            "(an unquoted delimiter inside a value?); its columns cannot be trusted",
        )
        return
    if uid_index >= len(row) or not row[uid_index].strip():
        collector.problem(line, shown, f"empty {columns[uid_index]} cell")
        return
    candidate = row[uid_index].strip()
    before = collector.problem_count
    collector.add(candidate, line, what=f"in column {columns[uid_index]!r} is not a DICOM UID")
    if collector.problem_count == before and candidate not in rows:
        rows[candidate] = tuple(cell.strip() for cell in row[: len(columns)])


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter occurring most often outside quotes in the header (ties: comma, tab, ';')."""
    outside = "".join(part for i, part in enumerate(header_line.split('"')) if i % 2 == 0)
    counts = {delimiter: outside.count(delimiter) for delimiter in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda delimiter: counts[delimiter])
    return best if counts[best] > 0 else ","


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _\t")


def _uid_column_index(columns: tuple[str, ...], source: str, line: int) -> int:
    normalised = [_normalise(name) for name in columns]
    for wanted in (UID_COLUMN, *_COLUMN_PREFERENCE):
        names = columns if wanted == UID_COLUMN else normalised
        matches = [i for i, name in enumerate(names) if name == wanted]
        if len(matches) > 1:
            raise InputError(
                f"more than one series UID column: {', '.join(repr(columns[i]) for i in matches)}",
                source=source,
                location=str(line),
            )
        if matches:
            return matches[0]
    found = ", ".join(repr(excerpt(name)) for name in columns[:20])
    hint = ""
    first = columns[0].strip().rstrip(",") if columns else ""
    if is_valid_uid(first):
        hint = "; the first line is a UID: add a header line 'SeriesInstanceUID' above the list"
    raise InputError(
        f"no {UID_COLUMN} column (also accepted: 'Series Instance UID', 'Series UID'); "
        f"columns found: {found}{hint}",
        source=source,
        location=str(line),
    )
