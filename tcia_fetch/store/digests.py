"""Compact sets of series UIDs: 8 bytes per series instead of a Python object per series.

A job of 600,000 series cannot keep a ``set[str]`` of UIDs per purpose (planned, seen, done,
failed): each UID string costs ~100 bytes and each set slot more. Here a UID is represented by
its 64-bit BLAKE2b digest, and a set of UIDs by a sorted ``array('Q')`` searched with ``bisect``
(C speed, 8 bytes per member).

Collisions: two distinct UIDs share a digest with probability about n²/2^65, i.e. 3·10^-8 for
a million series; a UID outside a set of a million falsely matches with probability 5·10^-14.
Both are far below the rate of the failures the rest of the engine guards against (and a
collision can only make a series look done, which ``tcia-fetch verify`` would not catch, so
the bound is stated here, in the one place that makes the choice).
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Final

__all__ = [
    "LAST_PLAN_DIGESTS",
    "DigestSet",
    "GrowingDigestSet",
    "SortedDigests",
    "sorted_unique",
    "uid_digest",
]

DIGEST_BYTES: Final = 8
#: Sorted digests of the last run's plan, beside ``last-plan.json`` in the state directory.
LAST_PLAN_DIGESTS: Final = "last-plan.digests"


def uid_digest(uid: str) -> int:
    """The 64-bit digest that stands for ``uid`` in every compact structure."""
    return int.from_bytes(hashlib.blake2b(uid.encode("utf-8"), digest_size=DIGEST_BYTES).digest(), "little")


#: Below this many values one ``sorted`` of Python ints is cheapest; above it the values are
#: first split by their top byte so only 1/256 of them is ever a Python list at once.
_SMALL_SORT: Final = 65_536


def sorted_unique(values: Iterable[int]) -> array[int]:
    """A sorted, duplicate-free ``array('Q')`` of ``values``.

    ``sorted`` of n digests builds a list of n Python ints (~40 bytes each: 24 MB for 600,000,
    transient but enough to push a 600,000-series run past its memory budget, issue 13), so a
    large input is partitioned by its top byte into 256 arrays (8 bytes per value) and each
    part is sorted on its own: the transient list holds ~n/256 ints.
    """
    source = values if isinstance(values, array) else array("Q", values)
    if len(source) <= _SMALL_SORT:
        return _append_unique(array("Q"), sorted(source))
    parts = [array("Q") for _ in range(256)]
    appenders = [part.append for part in parts]
    for value in source:
        appenders[value >> 56](value)
    del source
    result = array("Q")
    for index in range(256):
        part, parts[index] = parts[index], array("Q")  # free each part as soon as it is merged
        _append_unique(result, sorted(part))
    return result


def _append_unique(result: array[int], ordered: Iterable[int]) -> array[int]:
    """Append the ascending ``ordered`` values to ``result``, dropping repeats; returns ``result``."""
    previous = result[-1] if result else -1
    for value in ordered:
        if value != previous:
            result.append(value)
            previous = value
    return result


class SortedDigests:
    """An immutable set of digests: a sorted unique ``array('Q')`` with binary search."""

    __slots__ = ("_values",)

    def __init__(self, values: array[int] | None = None) -> None:
        self._values = values if values is not None else array("Q")

    @classmethod
    def of_uids(cls, uids: Iterable[str]) -> SortedDigests:
        return cls(sorted_unique(uid_digest(uid) for uid in uids))

    @classmethod
    def from_bytes(cls, data: bytes) -> SortedDigests:
        """Read the form written by :meth:`to_bytes`; the order is checked, not trusted."""
        if len(data) % DIGEST_BYTES:
            raise ValueError(f"{len(data)} bytes is not a whole number of {DIGEST_BYTES}-byte digests")
        values = array("Q")
        values.frombytes(data)
        if any(values[index] >= values[index + 1] for index in range(len(values) - 1)):
            values = sorted_unique(values)
        return cls(values)

    def to_bytes(self) -> bytes:
        return self._values.tobytes()

    def without(self, uids: Iterable[str]) -> SortedDigests:
        """This set without ``uids`` (a few: each removal is a bisect and a slice).

        When none of them is a member the set itself is returned (it is immutable): the usual
        case, and at 600,000 series a copy is 4.8 MB.
        """
        members = [digest for digest in map(uid_digest, uids) if self.has(digest)]
        if not members:
            return self
        values = array("Q", self._values)
        for digest in members:
            index = bisect_left(values, digest)
            if index < len(values) and values[index] == digest:
                del values[index]
        return SortedDigests(values)

    @property
    def values(self) -> array[int]:
        return self._values

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def has(self, digest: int) -> bool:
        values = self._values
        index = bisect_left(values, digest)
        return index < len(values) and values[index] == digest

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self.has(uid_digest(uid))


class GrowingDigestSet:
    """A digest set that grows (the planner's "seen" set): sorted array + a small unsorted buffer.

    New digests go to a Python set; when it holds 64k (each buffered digest costs ~70 bytes, an
    array slot 8) the buffer is sorted and merged into a new sorted array in one linear pass.
    Memory stays ~8 bytes per member plus the buffer (at most ~5 MB); the merges copy the
    array once per 64k additions, in C (``extend`` of slices), which stays cheap next to the
    per-series work of a run up to millions of series.
    """

    __slots__ = ("_buffer", "_sorted")

    _MAX_BUFFER: Final = 65_536

    def __init__(self) -> None:
        self._sorted = SortedDigests()
        self._buffer: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._buffer)

    def has(self, digest: int) -> bool:
        return digest in self._buffer or self._sorted.has(digest)

    def add(self, digest: int) -> bool:
        """Add ``digest``; False when it was already a member."""
        if self.has(digest):
            return False
        self._buffer.add(digest)
        if len(self._buffer) >= self._MAX_BUFFER:
            self._merge()
        return True

    def _merge(self) -> None:
        """One linear merge of the sorted part with the sorted buffer (none of whose members it holds)."""
        fresh = sorted(self._buffer)
        self._buffer = set()
        old = self._sorted.values
        merged = array("Q")
        position = 0
        for value in fresh:
            cut = bisect_left(old, value, position)
            merged.extend(old[position:cut])
            merged.append(value)
            position = cut
        merged.extend(old[position:])
        self._sorted = SortedDigests(merged)

    def freeze(self) -> SortedDigests:
        """The members as an immutable sorted set."""
        if self._buffer:
            self._merge()
        return self._sorted

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self.has(uid_digest(uid))


DigestSet = SortedDigests | GrowingDigestSet
