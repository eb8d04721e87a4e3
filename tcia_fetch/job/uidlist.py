"""Collecting series UIDs from a list file: validation, de-duplication and problem reports.

The ``.tcia`` and CSV/TSV parsers differ only in how they find the UID on a line; what happens
to it next is shared and lives here, so both inputs obey the same rules:

* every UID is checked against the DICOM grammar (:mod:`tcia_fetch.uid`);
* a repeated UID is kept once, at its first position, and every repeat is counted;
* a line that is not a UID is never dropped silently: it becomes a :class:`LineProblem`.
  In strict mode (the default) any problem is an InputError listing the first few with their
  line numbers; otherwise the problems travel with the result into the run report.

Memory is about 12 bytes per distinct UID (its 8-byte key and 4-byte line number, in
arrays: :mod:`.compact`), never the UID strings: only the first :data:`MAX_RECORDED_DETAILS`
problems and duplicates are kept in detail, the rest are counted.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from tcia_fetch.errors import InputError
from tcia_fetch.job.compact import CompactUids, Replay, list_key
from tcia_fetch.job.text import excerpt
from tcia_fetch.store.digests import GrowingDigestSet
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

    uids: CompactUids
    duplicates: int
    duplicate_details: tuple[DuplicateUid, ...]
    problems: list[LineProblem]
    problem_count: int


class UidCollector:
    """Accumulates UIDs from one file, one line at a time; see the module docstring.

    ``line`` numbers given to :meth:`add` must grow (each line gives at most one UID), which
    is what lets :class:`~.compact.CompactUids` find the UIDs again by line.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._seen = GrowingDigestSet()
        self._digests = array("Q")
        self._lines = array("I")
        self._duplicates = 0
        #: The first repeats: (uid, line, digest); where each was first seen is looked up once
        #: at the end, in one pass over the arrays.
        self._repeats: list[tuple[str, int, int]] = []
        self._problems: list[LineProblem] = []
        self._problem_count = 0

    def add(self, candidate: str, line: int, *, what: str = "is not a DICOM UID") -> bool:
        """Validate ``candidate`` (already stripped) and keep it, count it, or record a problem.

        True when it was kept (a new, valid UID).
        """
        digest = list_key(candidate)
        if self._seen.has(digest):
            self._duplicates += 1
            if len(self._repeats) < MAX_RECORDED_DETAILS:
                self._repeats.append((candidate, line, digest))
            return False
        problem = uid_problem(candidate)
        if problem is None:
            self._seen.add(digest)
            self._digests.append(digest)
            self._lines.append(line)
            return True
        if len(self._problems) >= MAX_RECORDED_DETAILS:
            self._problem_count += 1  # counted only: no need to format a message nobody keeps
        else:
            self.problem(line, candidate, f"{excerpt(candidate)!r} {what} ({problem})")
        return False

    def problem(self, line: int, text: str, reason: str) -> None:
        """Record a line that cannot be used, with a reason a user can act on."""
        self._problem_count += 1
        if len(self._problems) < MAX_RECORDED_DETAILS:
            self._problems.append(LineProblem(line, excerpt(text), reason, self.source))

    @property
    def problem_count(self) -> int:
        return self._problem_count

    def result(self, replay: Replay) -> UidListResult:
        """The collected list; ``replay`` reads the source again (see :class:`CompactUids`)."""
        first_lines: dict[int, int] = {}
        if self._repeats:
            wanted = {digest for _, _, digest in self._repeats}
            for digest, line in zip(self._digests, self._lines, strict=True):
                if digest in wanted and digest not in first_lines:
                    first_lines[digest] = line
        return UidListResult(
            uids=CompactUids(self.source, self._digests, self._lines, replay),
            duplicates=self._duplicates,
            duplicate_details=tuple(
                DuplicateUid(uid, line, first_lines[digest]) for uid, line, digest in self._repeats
            ),
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
