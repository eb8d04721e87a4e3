"""Which runs may share a destination: one whole-job run, or the shards of one split, never both.

A run of the whole job holds ``lock``; shard K of N holds ``lock.shard-K-of-N`` (see lock.py), so
the shards of an array job write one destination side by side and a second process on the same
shard is still refused with who holds it. Mixing is refused in both directions: a whole-job run
would download every shard's series a second time, and two splits with different N overlap.

Each run takes its own lock first and then looks for live locks of the other kind; if it sees
one it lets go of its own and refuses. Two runs racing that way may both refuse (both exit 3 and
say why), but they cannot both proceed: whichever looked second sees the other's lock. The data
protocol never depends on these locks for correctness (publish never overwrites, every writer has
its own journal segment); they prevent wasted double downloads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tcia_fetch.errors import DestinationBusyError
from tcia_fetch.plan.shard import Shard
from tcia_fetch.store._fs import storage_error
from tcia_fetch.store.lock import (
    LOCK_NAME,
    DestinationLock,
    LockHolder,
    acquire_destination,
    holder_is_live,
    read_holder,
)

__all__ = ["ShardLock", "acquire_run_lock", "lock_name_for", "shard_locks"]

_SHARD_LOCK: Final = re.compile(r"^lock\.shard-(\d+)-of-(\d+)$")


def lock_name_for(shard: Shard | None) -> str:
    """``lock`` for a whole-job run (or a split of 1), ``lock.shard-K-of-N`` for a shard."""
    return LOCK_NAME if shard is None or shard.count == 1 else f"{LOCK_NAME}.{shard.name}"


@dataclass(frozen=True, slots=True)
class ShardLock:
    """A shard lock file found in a state directory, and whether its holder still runs."""

    shard: Shard
    holder: LockHolder
    live: bool


def shard_locks(state_dir: Path) -> list[ShardLock]:
    """Every shard lock present (live or left by a dead run), in shard order."""
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise storage_error(exc, action="list", path=state_dir) from exc
    found: list[ShardLock] = []
    for name in names:
        match = _SHARD_LOCK.match(name)
        if match is None:
            continue
        index, count = int(match.group(1)), int(match.group(2))
        if not 0 <= index < count:
            continue
        holder = read_holder(state_dir / name)
        if holder is not None:
            found.append(ShardLock(Shard(index, count), holder, holder_is_live(holder)))
    return sorted(found, key=lambda item: (item.shard.count, item.shard.index))


def acquire_run_lock(state_dir: Path, *, run_id: str, shard: Shard | None) -> DestinationLock:
    """Take the lock a (whole-job or shard) run needs; DestinationBusyError naming who is in the way."""
    lock = acquire_destination(state_dir, run_id=run_id, lock_name=lock_name_for(shard))
    try:
        conflict = _conflict(state_dir, shard)
    except BaseException:
        lock.release()
        raise
    if conflict is not None:
        lock.release()
        raise DestinationBusyError(conflict)
    return lock


def _conflict(state_dir: Path, shard: Shard | None) -> str | None:
    sharded = shard is not None and shard.count > 1
    if sharded:
        assert shard is not None
        whole = read_holder(state_dir / LOCK_NAME)
        if whole is not None and whole.pid > 0 and holder_is_live(whole):
            return (
                f"destination is in use by a whole-job run ({whole.describe()}); shards and a whole-job "
                "run never share a destination: wait for it to finish, or stop it and run the shards"
            )
    for other in shard_locks(state_dir):
        if not other.live:
            continue
        if not sharded:
            return (
                f"destination is in use by shard {other.shard.label} ({other.holder.describe()}); a "
                "whole-job run waits until every shard of the split has finished (tcia-fetch status "
                "shows which are running)"
            )
        assert shard is not None
        if other.shard.count != shard.count:
            return (
                f"destination is in use by shard {other.shard.label} of a split into {other.shard.count}, "
                f"not {shard.count} ({other.holder.describe()}); every shard of one destination must "
                "use the same N"
            )
    return None
