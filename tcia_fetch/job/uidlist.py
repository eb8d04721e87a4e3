"""Collecting series UIDs from a list file: validation, de-duplication and problem reports.

The ``.tcia`` and CSV/TSV parsers differ only in how they find the UID on a line; what happens
to it next is shared and lives here, so both inputs obey the same rules:

* every UID is checked against the DICOM grammar (:mod:`tcia_fetch.uid`);
* a repeated UID is kept once, at its first position, and every repeat is counted;
* a line that is not a UID is never dropped silently: it becomes a :class:`LineProblem`.
  In strict mode (the default) any problem is an InputError listing the first few with their
  line numbers; otherwise the problems travel with the result into the run report.

Memory stays bounded by the number of distinct UIDs: only the first
:data:`MAX_RECORDED_DETAILS` problems and duplicates are kept in detail, the rest are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcia_fetch.errors import InputError
from tcia_fetch.job.text import excerpt
from tcia_fetch.uid import uid_problem

__all__ = [
    "MAX_RECORDED_DETAILS",
    "DuplicateUid",
    "LineProblem",
    "UidCollector",
    "UidListResult",
    "raise_for_problems",
]

#: Problems and duplicates kept with line detail; beyond this only counts grow.
MAX_RECORDED_DETAILS = 1000
#: Problems quoted in a strict-mode error message.
_PROBLEMS_IN_MESSAGE = 5


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line of a list file that is not a usable series UID.

    ``text`` is a printable excerpt of the line (never the raw bytes); ``source`` names the
    file, so problems from several files can be merged into one report.
    """

    line: int
    text: str
    reason: str
    source: str = ""

    @property
    def location(self) -> str:
        """``file:line``, the form editors and ``grep -n`` understand."""
        return f"{self.source}:{self.line}" if self.source else f"line {self.line}"

    def describe(self) -> str:
        """One line for logs and reports: ``a.tcia:12: 'abc' is not a DICOM UID (...)``."""
        return f"{self.location}: {self.reason}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class DuplicateUid:
    """A UID seen again at ``line``; it was first seen at ``first_line`` and is kept there."""

    uid: str
    line: int
    first_line: int


@dataclass(frozen=True, slots=True)
class UidListResult:
    """What a collector gathered: distinct valid UIDs in first-seen order, with bookkeeping."""

    uids: tuple[str, ...]
    uid_lines: tuple[int, ...]
    duplicates: int
    duplicate_details: tuple[DuplicateUid, ...]
    problems: list[LineProblem]
    problem_count: int


class UidCollector:
    """Accumulates UIDs from one file, one line at a time; see the module docstring."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._first_line: dict[str, int] = {}
        self._duplicates = 0
        self._duplicate_details: list[DuplicateUid] = []
        self._problems: list[LineProblem] = []
        self._problem_count = 0

    def add(self, candidate: str, line: int, *, what: str = "is not a DICOM UID") -> None:
        """Validate ``candidate`` (already stripped) and keep it, count it, or record a problem."""
        first = self._first_line.get(candidate)
        if first is None:
            problem = uid_problem(candidate)
            if problem is None:
                self._first_line[candidate] = line
            elif len(self._problems) >= MAX_RECORDED_DETAILS:
                self._problem_count += 1  # counted only: no need to format a message nobody keeps
            else:
                self.problem(line, candidate, f"{excerpt(candidate)!r} {what} ({problem})")
            return
        self._duplicates += 1
        if len(self._duplicate_details) < MAX_RECORDED_DETAILS:
            self._duplicate_details.append(DuplicateUid(candidate, line, first))

    def problem(self, line: int, text: str, reason: str) -> None:
        """Record a line that cannot be used, with a reason a user can act on."""
        self._problem_count += 1
        if len(self._problems) < MAX_RECORDED_DETAILS:
            self._problems.append(LineProblem(line, excerpt(text), reason, self.source))

    @property
    def problem_count(self) -> int:
        return self._problem_count

    def result(self) -> UidListResult:
        return UidListResult(
            uids=tuple(self._first_line),
            uid_lines=tuple(self._first_line.values()),
            duplicates=self._duplicates,
            duplicate_details=tuple(self._duplicate_details),
            problems=list(self._problems),
            problem_count=self._problem_count,
        )


def raise_for_problems(problems: list[LineProblem], problem_count: int, *, source: str) -> None:
    """Raise one InputError quoting the first few problems; do nothing when there are none.

    The first problem becomes the error's location; the others follow on their own lines in
    ``file:line: reason`` form, then how many more there are and how to proceed anyway.
    """
    if problem_count == 0:
        return
    first = problems[0]
    lines = [first.reason]
    lines.extend(f"  {p.describe()}" for p in problems[1:_PROBLEMS_IN_MESSAGE])
    remaining = problem_count - min(len(problems), _PROBLEMS_IN_MESSAGE)
    if remaining > 0:
        lines.append(f"  ... and {remaining} more invalid line{'s' if remaining != 1 else ''}")
    lines.append(
        f"  {problem_count} invalid line{'s' if problem_count != 1 else ''} in total: fix "
        f"{'them' if problem_count != 1 else 'it'}, or skip invalid lines (--skip-invalid) to "
        "download the valid series only"
    )
    raise InputError("\n".join(lines), source=source, location=str(first.line))
