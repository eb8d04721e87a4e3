"""Which shard of a split job owns a series, and each shard's share of the politeness budget.

A job split over an array (``--shard K/N``) is planned in full by every shard; each keeps the
series whose UID hashes to it. The assignment must be

* **deterministic and independent**: a UID's shard is a function of the UID and N alone, never of
  the other UIDs of the job, so every shard agrees without talking to the others and a job that
  grows between runs (a collection gained series) never moves a series that was already placed;
* **balanced**: about 1/N of the series each (property-tested on 10^5 random UIDs);
* **stable when N changes**: with jump consistent hashing (Lamping & Veach 2014) going from N to
  N+1 shards moves only the ~1/(N+1) of the series that land on the new shard, so a rerun with a
  different split re-checks little; plain ``hash mod N`` would reshuffle almost everything.

The hash is BLAKE2b of the UID's UTF-8 bytes (stable across Python versions and machines, unlike
``hash()``), read as an unsigned 64-bit key for the jump hash. Pure functions only: no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Final

from tcia_fetch.errors import InputError

__all__ = ["Shard", "parse_shard", "shard_of", "split_count", "split_rate"]

_SHARD_TEXT: Final = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
#: A cluster array rarely exceeds a few thousand tasks; the cap keeps lock and report names sane.
MAX_SHARDS: Final = 100_000
_MASK64: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, like ``$SLURM_ARRAY_TASK_ID`` with ``--array=0-N``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise InputError(f"the shard count must be between 1 and {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise InputError(
                f"shard {self.index} does not exist in a split of {self.count}: "
                f"K must be between 0 and {self.count - 1}"
            )

    def owns(self, series_uid: str) -> bool:
        """True when this shard downloads ``series_uid``."""
        return self.count == 1 or shard_of(series_uid, self.count) == self.index

    @property
    def label(self) -> str:
        """``3/16``: what the user typed."""
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """``shard-3-of-16``: safe in file names (locks, plans, reports)."""
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(text: str, *, source: str = "--shard") -> Shard:
    """``"3/16"`` → ``Shard(3, 16)``; anything else is an :class:`InputError` naming the option."""
    match = _SHARD_TEXT.match(text)
    if match is None:
        raise InputError(
            f"{text!r} is not a shard: write K/N, e.g. 3/16 for the 4th of 16 "
            "(K from 0 to N-1, such as $SLURM_ARRAY_TASK_ID/16)",
            source=source,
        )
    try:
        return Shard(int(match.group(1)), int(match.group(2)))
    except InputError as exc:
        raise InputError(str(exc), source=source) from None


def _key(series_uid: str) -> int:
    return int.from_bytes(hashlib.blake2b(series_uid.encode("utf-8"), digest_size=8).digest(), "big")


def shard_of(series_uid: str, count: int) -> int:
    """The shard (0..count-1) that owns ``series_uid``: jump consistent hash of its BLAKE2b key."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    key = _key(series_uid)
    bucket, jump = -1, 0
    while jump < count:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK64
        jump = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def split_count(total: int, count: int, index: int) -> int:
    """Shard ``index``'s share of an integer budget (downloads in flight).

    The first ``total mod count`` shards get one more than the rest, so the shares add up to
    ``total`` exactly; but every shard gets at least 1 (a shard with no download slot could never
    finish), so with more shards than ``total`` the sum is ``count``, and the caller says so.
    """
    if total < 1 or count < 1 or not 0 <= index < count:
        raise ValueError(f"bad split: total={total}, count={count}, index={index}")
    base, extra = divmod(total, count)
    return max(1, base + (1 if index < extra else 0))


def split_rate(total: float | None, count: int) -> float | None:
    """Each shard's share of a rate budget (requests or bytes per second); None stays None."""
    if total is None:
        return None
    if not (math.isfinite(total) and total > 0) or count < 1:
        raise ValueError(f"bad rate split: total={total}, count={count}")
    return total / count
