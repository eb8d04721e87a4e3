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

The whole input is processed in one linear pass; memory is proportional to the number of
distinct UIDs, whatever the file holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tcia_fetch.errors import InputError
from tcia_fetch.job.text import decode_input, excerpt, read_input_bytes, split_lines
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
class Manifest:
    """A parsed manifest: distinct valid UIDs in file order, plus everything worth reporting.

    ``uid_lines[i]`` is the line on which ``uids[i]`` first appeared. ``problems`` holds the
    first invalid lines in detail (only possible with ``strict=False``); ``problem_count`` is
    the total. ``duplicates`` counts repeated UIDs, ``duplicate_details`` says where (the first
    ones). ``properties`` are the header keys as written (``downloadServerUrl``,
    ``includeAnnotation``, ``noOfrRetry``, ``databasketId``, ``manifestVersion``, ...).
    """

    source: str
    properties: dict[str, str]
    uids: tuple[str, ...]
    uid_lines: tuple[int, ...]
    duplicates: int
    duplicate_details: tuple[DuplicateUid, ...]
    problems: list[LineProblem]
    problem_count: int
    marker_line: int
    header_lines: tuple[int, ...]

    def origins(self) -> Iterator[tuple[str, str]]:
        """``(uid, "file:line")`` for every UID, in order, for plans and reports."""
        for uid, line in zip(self.uids, self.uid_lines, strict=True):
            yield uid, f"{self.source}:{line}"

    @property
    def manifest_version(self) -> str | None:
        return self.properties.get("manifestVersion")

    @property
    def download_server_url(self) -> str | None:
        return self.properties.get("downloadServerUrl")


def read_manifest(path: Path, *, strict: bool = True) -> Manifest:
    """Read and parse a ``.tcia`` file; every failure is an InputError naming ``path``."""
    return parse_manifest_bytes(read_input_bytes(path), source=str(path), strict=strict)


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
    lines = split_lines(text)
    properties: dict[str, str] = {}
    collector = UidCollector(source)
    found = _find_marker(lines, properties, collector)
    if found is None:
        raise InputError(
            f"no '{MANIFEST_MARKER}' line found; {_HOW_A_MANIFEST_LOOKS}{_plain_list_hint(lines)}",
            source=source,
        )
    marker_index, rest_of_marker_line = found

    header_lines: list[int] = []
    # The marker line may carry a UID after "=" (hand-written lists); treat it as a list line.
    body = [(marker_index + 1, rest_of_marker_line)] if rest_of_marker_line.strip(" \t\ufeff,") else []
    seen_first_line = False
    for number, raw in _body_lines(lines, marker_index + 1, body):
        candidate = _clean_list_line(raw)
        if not candidate or candidate.startswith("#"):
            continue
        if not seen_first_line and candidate.lower() in KNOWN_LIST_HEADERS:
            header_lines.append(number)
            seen_first_line = True
            continue
        seen_first_line = True
        if "=" in candidate:
            collector.problem(
                number,
                raw,
                f"header line {excerpt(candidate[:40])!r} inside the UID list"
                " (were two manifests concatenated?)",
            )
            continue
        collector.add(candidate, number)

    result = collector.result()
    if strict:
        raise_for_problems(result.problems, result.problem_count, source=source)
    if not result.uids:
        detail = f" ({result.problem_count} invalid lines skipped)" if result.problem_count else ""
        raise InputError(
            f"no series UIDs after the '{MANIFEST_MARKER}' line{detail}",
            source=source,
            location=str(marker_index + 1),
        )
    return Manifest(
        source=source,
        properties=properties,
        uids=result.uids,
        uid_lines=result.uid_lines,
        duplicates=result.duplicates,
        duplicate_details=result.duplicate_details,
        problems=result.problems,
        problem_count=result.problem_count,
        marker_line=marker_index + 1,
        header_lines=tuple(header_lines),
    )


def _find_marker(
    lines: list[str], properties: dict[str, str], collector: UidCollector
) -> tuple[int, str] | None:
    """Index of the marker line and the text after its ``=``; fills ``properties`` on the way.

    Header lines that are not properties, comments or blank become problems: a manifest whose
    header holds UIDs or prose is not what the user thinks it is.
    """
    for index, line in enumerate(lines):
        marker = _MARKER_RE.match(line)
        if marker is not None:
            return index, marker.group(1)
        stripped = line.strip().lstrip("\ufeff").strip()
        if not stripped or stripped[0] in "#!":
            continue
        match = _PROPERTY_RE.match(stripped)
        if match is None:
            collector.problem(
                index + 1,
                line,
                f"{excerpt(stripped[:40])!r} before '{MANIFEST_MARKER}' is not a key=value line",
            )
            continue
        properties[match.group(1)] = match.group(2).strip()
    return None


def _clean_list_line(raw: str) -> str:
    """Strip whitespace, a stray BOM and trailing commas: ``' 1.2.3 ,, '`` becomes ``'1.2.3'``."""
    candidate = raw.strip()
    if candidate.startswith("\ufeff"):
        candidate = candidate.lstrip("\ufeff").strip()
    if candidate.endswith(","):
        candidate = _TRAILING_JUNK.sub("", candidate)
    return candidate


def _plain_list_hint(lines: list[str]) -> str:
    for line in lines[:100]:
        stripped = _clean_list_line(line)
        if stripped:
            if is_valid_uid(stripped):
                return (
                    "; this file looks like a plain list of UIDs: put a line "
                    f"'{MANIFEST_MARKER}' above them (or a header line 'SeriesInstanceUID' in a .csv)"
                )
            return ""
    return ""


def _body_lines(lines: list[str], start: int, prefix: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield from prefix
    for index in range(start, len(lines)):
        yield index + 1, lines[index]
