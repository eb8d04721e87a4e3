"""A list file's distinct UIDs without one Python object per UID (issue 13).

A manifest of 600,000 UIDs held as strings, with their line numbers and origins, costs
~0.5 KB per UID: 300 MB before a single download. Here a list is two arrays in file order,
each UID's 8-byte key (:func:`list_key`) and its 4-byte line number, and the UID text is read
again from the file when the planner asks for it (:meth:`CompactUids.__iter__`). The keys make
the second reading safe: a file that changed since it was validated is an InputError naming
it, never a different job.

:class:`ExplicitUids` strings several such lists together (inline UIDs, manifests, tables) with
the cross-file de-duplication already done, and is what :class:`~.jobfile.JobSpec` holds.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from tcia_fetch.errors import InputError
from tcia_fetch.store.digests import GrowingDigestSet

if TYPE_CHECKING:
    from tcia_fetch.job.jobfile import UidOrigin

__all__ = ["CompactUidList", "CompactUids", "ExplicitUids", "Replay", "list_key"]

_MASK = (1 << 64) - 1


def list_key(uid: str) -> int:
    """A UID's 64-bit key inside one process: Python's own string hash, made unsigned.

    Not :func:`~tcia_fetch.store.digests.uid_digest`: BLAKE2b costs ~4 us per UID and a list
    file is read twice, while ``hash`` is SipHash (64-bit, so the same collision odds as the
    stored digests: ~3e-8 for a million distinct UIDs), cached on the string, and ~7x cheaper.
    It is randomised per process, so these keys are never stored or sent anywhere.
    """
    return hash(uid) & _MASK


#: A fresh pass over the source: ``(line, candidate)`` for every line a UID was taken from
#: (and possibly others; only the recorded lines are used).
Replay = Callable[[], Iterable[tuple[int, str]]]


class CompactUids:
    """Distinct valid UIDs of one source in first-seen order: digests, lines and a replay."""

    __slots__ = ("_digests", "_lines", "_replay", "source")

    def __init__(self, source: str, digests: array[int], lines: array[int], replay: Replay) -> None:
        if len(digests) != len(lines):
            raise ValueError("digests and lines differ in length")
        self.source = source
        self._digests = digests
        self._lines = lines
        self._replay = replay

    def __len__(self) -> int:
        return len(self._digests)

    def __eq__(self, other: object) -> bool:
        """Same source and the same UIDs on the same lines (the text is not read again)."""
        if not isinstance(other, CompactUids):
            return NotImplemented
        return (self.source, self._lines, self._digests) == (other.source, other._lines, other._digests)

    def __hash__(self) -> int:
        return hash((self.source, len(self._digests)))

    @property
    def digests(self) -> array[int]:
        """The UIDs' digests in file order (8 bytes each)."""
        return self._digests

    @property
    def lines(self) -> array[int]:
        """``lines[i]`` is the line the i-th UID was first seen on."""
        return self._lines

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """``(uid, line)`` in file order, the text read again from the source."""
        lines, digests = self._lines, self._digests
        count = len(lines)
        if count == 0:
            return
        index, wanted = 0, lines[0]
        for line, candidate in self._replay():
            if line < wanted:
                continue
            if line != wanted or list_key(candidate) != digests[index]:
                raise self._changed(line)
            yield candidate, line
            index += 1
            if index == count:
                return
            wanted = lines[index]
        raise self._changed(wanted)

    def _changed(self, line: int) -> InputError:
        return InputError(
            "the file changed while the job was running (its UIDs were checked when the job "
            "started): restore it, or start the job again",
            source=self.source,
            location=str(line),
        )


class CompactUidList:
    """The UID views a parsed list (manifest, UID table) derives from its ``compact`` field."""

    __slots__ = ()
    compact: CompactUids

    @property
    def uids(self) -> tuple[str, ...]:
        """Every UID as a string (one object per UID: for small lists and tests)."""
        return tuple(uid for uid, _ in self.compact)

    @property
    def uid_lines(self) -> tuple[int, ...]:
        """The line of each UID, in the same order."""
        return tuple(self.compact.lines)


@dataclass(frozen=True, slots=True)
class _Group:
    """One source's UIDs and the positions dropped as repeats of an earlier source's UIDs."""

    uids: CompactUids
    #: Sorted positions (indices into ``uids``) already named by an earlier source.
    dropped: array[int]
    #: ``origin`` text for a UID at ``line``: ``lists/a.tcia:14``, ``job.toml:series.uids[0]``.
    origin: Callable[[int], str]


class ExplicitUids(Sequence["UidOrigin"]):
    """The explicit UIDs of a job, de-duplicated across sources, in first-seen order.

    Iterating yields :class:`~.jobfile.UidOrigin` one at a time, reading list files again
    (blocking I/O: async callers iterate in a worker thread). Indexing walks from the start:
    it exists for tests and small jobs, not for loops.
    """

    __slots__ = ("_count", "_groups")

    def __init__(self, groups: Sequence[_Group] = ()) -> None:
        self._groups = tuple(groups)
        self._count = sum(len(group.uids) - len(group.dropped) for group in self._groups)

    @classmethod
    def join(cls, sources: Iterable[tuple[CompactUids, Callable[[int], str]]]) -> tuple[ExplicitUids, int]:
        """Sources in order, each UID kept at its first source; returns the set and the repeats."""
        seen = GrowingDigestSet()
        groups = []
        repeats = 0
        for uids, origin in sources:
            dropped = array("L")
            for index, digest in enumerate(uids.digests):
                if not seen.add(digest):
                    dropped.append(index)
            repeats += len(dropped)
            groups.append(_Group(uids, dropped, origin))
        return cls(groups), repeats

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[UidOrigin]:
        from tcia_fetch.job.jobfile import UidOrigin

        for group in self._groups:
            dropped = group.dropped
            next_drop = 0
            for index, (uid, line) in enumerate(group.uids):
                if next_drop < len(dropped) and dropped[next_drop] == index:
                    next_drop += 1
                    continue
                yield UidOrigin(uid, group.origin(line))

    @overload
    def __getitem__(self, index: int) -> UidOrigin: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[UidOrigin]: ...

    def __getitem__(self, index: int | slice) -> UidOrigin | Sequence[UidOrigin]:
        if isinstance(index, slice):
            return tuple(self)[index]
        position = index + self._count if index < 0 else index
        if not 0 <= position < self._count:
            raise IndexError("explicit UID index out of range")
        for number, origin in enumerate(self):
            if number == position:
                return origin
        raise IndexError("explicit UID index out of range")  # pragma: no cover - counted above

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExplicitUids | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._count)

    def __repr__(self) -> str:
        return f"ExplicitUids({self._count} UIDs from {len(self._groups)} sources)"
