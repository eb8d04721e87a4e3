"""The NBIA ``.tcia`` manifest: a Java-properties header, a marker, then one UID per line.

A manifest as TCIA serves it::

    downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
    includeAnnotation=true
    noOfrRetry=4
    databasketId=manifest-1598890146597.tcia
    manifestVersion=3.0
    ListOfSeriesToDownload=
    1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991
    ...

The parser goes by the marker, never by line counts (tcia_utils drops "the first 6 lines" and
breaks on any other header). Before the marker: ``key=value`` (or ``key:value``) properties,
``#``/``!`` comments and blank lines. The marker ``ListOfSeriesToDownload=`` is matched without
regard to case or surrounding whitespace; a UID written on the marker line itself is taken as
the first UID. After it, each line is stripped of whitespace and of trailing commas; blank
lines and ``#`` comments are skipped; a column header such as ``Series ID`` (seen in a real
NBIA manifest) is recorded in ``header_lines`` and skipped. Everything else must be a valid
DICOM UID, or it is a :class:`LineProblem` with its line number (see :mod:`.uidlist` for
strict and lenient handling). Repeated UIDs are kept once, in first-seen order, and counted.

The whole input is validated in one linear pass that streams the file; what is kept is ~12
bytes per distinct UID (:mod:`.compact`), and the UIDs are read from the file again, in a
second streaming pass, when the planner asks for them (issue 13: 600,000-UID manifests).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tcia_fetch.errors import InputError
from tcia_fetch.job.compact import CompactUidList, CompactUids
from tcia_fetch.job.text import decode_input, excerpt, iter_input_lines, iter_lines, split_lines
from tcia_fetch.job.uidlist import DuplicateUid, LineProblem, UidCollector, raise_for_problems
from tcia_fetch.uid import is_valid_uid

__all__ = [
    "MANIFEST_MARKER",
    "Manifest",
    "looks_like_manifest",
    "parse_manifest",
    "parse_manifest_bytes",
    "read_manifest",
]

MANIFEST_MARKER = "ListOfSeriesToDownload="

_MARKER_RE = re.compile(r"[\s\ufeff]*ListOfSeriesToDownload[ \t]*=(.*)", re.IGNORECASE | re.DOTALL)
_PROPERTY_RE = re.compile(r"([^=:\s]+)[ \t]*[=:](.*)", re.DOTALL)
_TRAILING_JUNK = re.compile(r"[\s,]+$")
#: Column headers some tools write as the first line of the UID list (NBIA's own
#: ``NBIA-Submission-Test-Data_225series`` manifest has ``Series ID``).
KNOWN_LIST_HEADERS = frozenset(
    {"series id", "seriesid", "series uid", "seriesinstanceuid", "series instance uid"}
)

_HOW_A_MANIFEST_LOOKS = (
    "a .tcia manifest has header lines such as 'manifestVersion=3.0', then a line "
    "'ListOfSeriesToDownload=', then one SeriesInstanceUID per line"
)
#: How far into a file :func:`looks_like_manifest` searches for the marker.
_SNIFF_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Manifest(CompactUidList):
    """A parsed manifest: distinct valid UIDs in file order, plus everything worth reporting.

    ``compact`` holds the UIDs (digests and lines; the text is read again from the source
    when iterated). ``uids``/``uid_lines`` materialise them for small lists and tests:
    ``uid_lines[i]`` is the line on which ``uids[i]`` first appeared. ``problems`` holds the
    first invalid lines in detail (only possible with ``strict=False``); ``problem_count`` is
    the total. ``duplicates`` counts repeated UIDs, ``duplicate_details`` says where (the first
    ones). ``properties`` are the header keys as written (``downloadServerUrl``,
    ``includeAnnotation``, ``noOfrRetry``, ``databasketId``, ``manifestVersion``, ...).
    """

    source: str
    properties: dict[str, str]
    compact: CompactUids
    duplicates: int
    duplicate_details: tuple[DuplicateUid, ...]
    problems: list[LineProblem]
    problem_count: int
    marker_line: int
    header_lines: tuple[int, ...]

    def origins(self) -> Iterator[tuple[str, str]]:
        """``(uid, "file:line")`` for every UID, in order, for plans and reports."""
        for uid, line in self.compact:
            yield uid, f"{self.source}:{line}"

    @property
    def manifest_version(self) -> str | None:
        return self.properties.get("manifestVersion")

    @property
    def download_server_url(self) -> str | None:
        return self.properties.get("downloadServerUrl")


def read_manifest(path: Path, *, strict: bool = True, source: str | None = None) -> Manifest:
    """Read and parse a ``.tcia`` file, streaming it; every failure is an InputError naming it.

    ``source`` is how messages name the file (default: ``path``).
    """
    name = str(path) if source is None else source
    return _parse_lines(lambda: iter_input_lines(path, source=name), source=name, strict=strict)


def parse_manifest_bytes(data: bytes, *, source: str, strict: bool = True) -> Manifest:
    """Decode (UTF-8, optional BOM; see :mod:`.text`) and parse a manifest's raw bytes."""
    return parse_manifest(decode_input(data, source=source), source=source, strict=strict)


def looks_like_manifest(text: str) -> bool:
    """True when a marker line appears near the start: how a manifest is recognised by content."""
    return any(_MARKER_RE.match(line) for line in split_lines(text[:_SNIFF_CHARS]))


def parse_manifest(text: str, *, source: str, strict: bool = True) -> Manifest:
    """Parse manifest text. ``source`` names the file in every message.

    Raises InputError when there is no marker, when no valid UID follows it, or (``strict``)
    when any line after the marker is neither a UID, blank, a comment nor a known header.
    """
    return _parse_lines(lambda: iter_lines(text), source=source, strict=strict)


class _Header:
    """What a pass learns besides UIDs; the replay passes a throwaway one."""

    def __init__(self, collector: UidCollector | None) -> None:
        self.collector = collector
        self.properties: dict[str, str] = {}
        self.marker_line = 0
        self.header_lines: list[int] = []

    def problem(self, line: int, text: str, reason: str) -> None:
        if self.collector is not None:
            self.collector.problem(line, text, reason)


def _parse_lines(lines: Callable[[], Iterator[str]], *, source: str, strict: bool) -> Manifest:
    collector = UidCollector(source)
    header = _Header(collector)
    add = collector.add
    for number, candidate in _scan(lines(), header):
        add(candidate, number)
    if header.marker_line == 0:
        raise InputError(
            f"no '{MANIFEST_MARKER}' line found; {_HOW_A_MANIFEST_LOOKS}"
            f"{_plain_list_hint(islice(lines(), 100))}",
            source=source,
        )

    def replay() -> Iterator[tuple[int, str]]:
        return _scan(lines(), _Header(None))

    result = collector.result(replay)
    if strict:
        raise_for_problems(result.problems, result.problem_count, source=source)
    if not len(result.uids):
        detail = f" ({result.problem_count} invalid lines skipped)" if result.problem_count else ""
        raise InputError(
            f"no series UIDs after the '{MANIFEST_MARKER}' line{detail}",
            source=source,
            location=str(header.marker_line),
        )
    return Manifest(
        source=source,
        properties=header.properties,
        compact=result.uids,
        duplicates=result.duplicates,
        duplicate_details=result.duplicate_details,
        problems=result.problems,
        problem_count=result.problem_count,
        marker_line=header.marker_line,
        header_lines=tuple(header.header_lines),
    )


def _scan(lines: Iterator[str], header: _Header) -> Iterator[tuple[int, str]]:
    """One pass over the lines (breaks kept): ``(line, candidate)`` for every would-be UID.

    Properties, the marker, a list header and problem lines go to ``header``. Header lines
    that are not properties, comments or blank are problems: a manifest whose header holds
    UIDs or prose is not what the user thinks it is.
    """
    number = 0
    marker_rest: str | None = None
    for raw in lines:
        number += 1
        line = raw.rstrip("\r\n")
        marker = _MARKER_RE.match(line)
        if marker is not None:
            marker_rest = marker.group(1)
            header.marker_line = number
            break
        stripped = line.strip().lstrip("\ufeff").strip()
        if not stripped or stripped[0] in "#!":
            continue
        match = _PROPERTY_RE.match(stripped)
        if match is None:
            header.problem(
                number, line, f"{excerpt(stripped[:40])!r} before '{MANIFEST_MARKER}' is not a key=value line"
            )
            continue
        header.properties[match.group(1)] = match.group(2).strip()
    if marker_rest is None:
        return
    # The marker line may carry a UID after "=" (hand-written lists); treat it as a list line.
    pending: list[str] = [marker_rest] if marker_rest.strip(" \t\ufeff,") else []
    if not pending:
        number += 1
    seen_first_line = False
    for raw in itertools.chain(pending, lines):
        candidate = raw.strip()  # also strips the line break
        if candidate.endswith(",") or candidate.startswith("\ufeff"):
            candidate = _clean_list_line(candidate)
        if not candidate or candidate[0] == "#":
            number += 1
            continue
        if not seen_first_line:
            seen_first_line = True
            if candidate.lower() in KNOWN_LIST_HEADERS:
                header.header_lines.append(number)
                number += 1
                continue
        if "=" in candidate:
            header.problem(
                number,
                raw.rstrip("\r\n"),
                f"header line {excerpt(candidate[:40])!r} inside the UID list"
                " (were two manifests concatenated?)",
            )
            number += 1
            continue
        yield number, candidate
        number += 1


def _clean_list_line(raw: str) -> str:
    """Strip whitespace, a stray BOM and trailing commas: ``' 1.2.3 ,, '`` becomes ``'1.2.3'``."""
    candidate = raw.strip()
    if candidate.startswith("\ufeff"):
        candidate = candidate.lstrip("\ufeff").strip()
    if candidate.endswith(","):
        candidate = _TRAILING_JUNK.sub("", candidate)
    return candidate


def _plain_list_hint(lines: Iterable[str]) -> str:
    for line in lines:
        stripped = _clean_list_line(line)
        if stripped:
            if is_valid_uid(stripped):
                return (
                    "; this file looks like a plain list of UIDs: put a line "
                    f"'{MANIFEST_MARKER}' above them (or a header line 'SeriesInstanceUID' in a .csv)"
                )
            return ""
    return ""
