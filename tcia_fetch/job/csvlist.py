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
columns of each kept row stay available through :meth:`UidTable.row_for` (which reads the file
again: rows are not kept, so a 600,000-row table costs ~12 bytes per UID, as a manifest does).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tcia_fetch.errors import InputError
from tcia_fetch.job.compact import CompactUidList, CompactUids
from tcia_fetch.job.text import decode_input, excerpt, iter_input_lines, iter_lines
from tcia_fetch.job.uidlist import DuplicateUid, LineProblem, UidCollector, raise_for_problems
from tcia_fetch.uid import is_valid_uid

__all__ = ["UID_COLUMN", "UidTable", "parse_uid_table", "parse_uid_table_bytes", "read_uid_table"]

UID_COLUMN = "SeriesInstanceUID"
#: Accepted column names after normalisation (lower case, no spaces or underscores), best first.
_COLUMN_PREFERENCE = ("seriesinstanceuid", "seriesuid", "seriesid")
_DELIMITERS = (",", "\t", ";")


@dataclass(frozen=True, slots=True)
class UidTable(CompactUidList):
    """Distinct valid UIDs from a table, in row order, with what went wrong.

    ``compact`` holds the UIDs (see :mod:`.compact`); ``uids``/``uid_lines`` materialise them
    for small tables and tests: ``uid_lines[i]`` is the (first physical) line of the row that
    gave ``uids[i]``. The other fields follow the manifest's
    :class:`~tcia_fetch.job.manifest.Manifest`.
    """

    source: str
    delimiter: str
    columns: tuple[str, ...]
    uid_column: str
    compact: CompactUids
    duplicates: int
    duplicate_details: tuple[DuplicateUid, ...]
    problems: list[LineProblem]
    problem_count: int
    _lines: Callable[[], Iterator[str]]

    def row_for(self, uid: str) -> dict[str, str]:
        """All columns of the first row that named ``uid`` (missing trailing cells read as "").

        Where the header repeats a column name, the leftmost column of that name is given. The
        UID column reads as the UID that was taken (stripped of the blanks around it), so a row
        always names its own UID. Reads the table again up to that row; KeyError when no kept
        row names ``uid``.
        """
        uid_index = self.columns.index(self.uid_column)
        kept = set(self.compact.lines)
        for line, candidate, values in _scan(self._lines(), self.delimiter, self.source, None, uid_index):
            if candidate == uid and line in kept:
                row: dict[str, str] = {}
                for index, name in enumerate(self.columns):
                    row.setdefault(name, values[index] if index < len(values) else "")
                row[self.uid_column] = uid
                return row
        raise KeyError(uid)

    def origins(self) -> Iterator[tuple[str, str]]:
        """``(uid, "file:line")`` for every UID, in order."""
        for uid, line in self.compact:
            yield uid, f"{self.source}:{line}"


def read_uid_table(path: Path, *, strict: bool = True, source: str | None = None) -> UidTable:
    """Read a CSV/TSV file, streaming it; every failure is an InputError naming it.

    ``source`` is how messages name the file (default: ``path``).
    """
    name = str(path) if source is None else source
    return _parse_lines(lambda: iter_input_lines(path, source=name), source=name, strict=strict)


def parse_uid_table_bytes(data: bytes, *, source: str, strict: bool = True) -> UidTable:
    """Decode (UTF-8, optional BOM; see :mod:`.text`) and parse a table's raw bytes."""
    return parse_uid_table(decode_input(data, source=source), source=source, strict=strict)


def parse_uid_table(text: str, *, source: str, strict: bool = True) -> UidTable:
    """Parse table text; raise InputError for a missing column, no UIDs, or (strict) bad rows."""
    text = text.removeprefix("\ufeff")
    return _parse_lines(lambda: iter_lines(text), source=source, strict=strict)


def _parse_lines(lines: Callable[[], Iterator[str]], *, source: str, strict: bool) -> UidTable:
    header_line = _first_nonblank(lines())
    if header_line is None:
        raise InputError(
            "the file is empty; expected a header line with a SeriesInstanceUID column", source=source
        )
    delimiter = _sniff_delimiter(header_line.removeprefix("\ufeff").rstrip("\r\n"))
    collector = UidCollector(source)
    header: list[tuple[tuple[str, ...], str]] = []
    add = collector.add
    for line, candidate, _row in _scan(lines(), delimiter, source, collector, None, header):
        add(candidate, line, what=f"in column {header[0][1]!r} is not a DICOM UID")
    if not header:
        raise InputError("no header line with a SeriesInstanceUID column", source=source)
    columns, uid_column = header[0][0], header[0][1]
    uid_index = columns.index(uid_column)

    def replay() -> Iterator[tuple[int, str]]:
        for line, candidate, _ in _scan(lines(), delimiter, source, None, uid_index):
            yield line, candidate

    result = collector.result(replay)
    if strict:
        raise_for_problems(result.problems, result.problem_count, source=source)
    if not len(result.uids):
        detail = f" ({result.problem_count} invalid rows skipped)" if result.problem_count else ""
        raise InputError(f"no series UIDs in column {uid_column!r}{detail}", source=source)
    return UidTable(
        source=source,
        delimiter=delimiter,
        columns=columns,
        uid_column=uid_column,
        compact=result.uids,
        duplicates=result.duplicates,
        duplicate_details=result.duplicate_details,
        problems=result.problems,
        problem_count=result.problem_count,
        _lines=lines,
    )


def _first_nonblank(lines: Iterator[str]) -> str | None:
    """The first non-blank line within the first 64 KB (the header, for the delimiter)."""
    taken = 0
    for line in islice(lines, 100_000):
        if line.strip():
            return line
        taken += len(line)
        if taken > 64 * 1024:
            break
    return None


def _scan(
    lines: Iterator[str],
    delimiter: str,
    source: str,
    collector: UidCollector | None,
    uid_index: int | None,
    header: list[tuple[tuple[str, ...], str]] | None = None,
) -> Iterator[tuple[int, str, list[str]]]:
    """``(first line, candidate, row)`` for every row whose UID cell is worth checking.

    The first non-blank row is the header (found, checked and put in ``header``); rows that
    cannot be trusted go to ``collector`` as problems (nowhere on a replay).
    """
    first = True
    reader = csv.reader(_without_first_bom(lines), delimiter=delimiter)
    columns: tuple[str, ...] = ()
    previous_end = 0
    for row in _rows_with_errors(reader, source):
        first_line, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if first:
            first = False
            columns = tuple(cell.strip().lstrip("\ufeff") for cell in row)
            found = _uid_column_index(columns, source, first_line)
            if header is not None:
                header.append((columns, columns[found]))
            uid_index = found if uid_index is None else uid_index
            continue
        assert uid_index is not None
        candidate = _candidate(row, first_line, columns, uid_index, collector)
        if candidate is not None:
            yield first_line, candidate, row


def _without_first_bom(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        yield line.removeprefix("\ufeff")
        break
    yield from lines


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


def _candidate(
    row: list[str], line: int, columns: tuple[str, ...], uid_index: int, collector: UidCollector | None
) -> str | None:
    """The row's UID cell, stripped; None (and a problem recorded) when the row cannot be used."""
    extra = [cell for cell in row[len(columns) :] if cell.strip()]
    if extra:
        if collector is not None:
            collector.problem(
                line,
                ",".join(row),
                f"row has {len(row)} fields but the header has {len(columns)} "
                "(an unquoted delimiter inside a value?); its columns cannot be trusted",
            )
        return None
    if uid_index >= len(row) or not row[uid_index].strip():
        if collector is not None:
            collector.problem(line, ",".join(row), f"empty {columns[uid_index]} cell")
        return None
    return row[uid_index].strip()


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
