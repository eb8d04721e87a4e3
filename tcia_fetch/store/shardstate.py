"""Where each shard of a split job stands, read from the destination (for ``tcia-fetch status``).

Every shard run leaves ``last-plan.shard-K-of-N.json`` (the series of its share), and
``last-report.shard-K-of-N.json`` when it ends; while it runs it holds ``lock.shard-K-of-N``. From
these and the merged journal this module tells, per shard, whether it is running, finished,
failed or never ran, and counts done, failed and pending; the union of the shard plans is the
whole job's plan. The newest split wins when a destination saw several (a rerun with another N).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tcia_fetch.errors import DestinationError
from tcia_fetch.plan.shard import Shard
from tcia_fetch.store.digests import SortedDigests, sorted_unique
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.runlock import shard_locks

__all__ = ["ShardStatus", "SplitStatus", "read_split_status"]

_PLAN: Final = re.compile(r"^last-plan\.shard-(\d+)-of-(\d+)\.json$")
_MAX_STATE_FILE_BYTES: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """One shard: its state (running, done, failed, interrupted, not started) and its counts."""

    shard: Shard
    state: str
    planned: int | None
    done: int
    failed: int
    pending: int | None
    holder: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "shard": self.shard.label,
            "state": self.state,
            "planned": self.planned,
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "holder": self.holder,
        }


@dataclass(frozen=True, slots=True)
class SplitStatus:
    """The newest split of a destination: its shards, and the whole job's plan (union of shares)."""

    count: int
    shards: tuple[ShardStatus, ...]
    planned: SortedDigests | None


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        if path.stat().st_size > _MAX_STATE_FILE_BYTES:
            raise DestinationError(f"{path} is implausibly large; refusing to read it")
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DestinationError(f"cannot read {path}: {exc}") from exc
    return document if isinstance(document, dict) else None


def read_split_status(state_dir: Path, journal: Journal) -> SplitStatus | None:
    """The newest split's status, or None when the destination was never run in shards (or when a
    whole-job run is more recent than every shard plan)."""
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DestinationError(f"cannot list {state_dir}: {exc}") from exc
    plans: dict[int, dict[int, Path]] = {}
    newest: tuple[float, int] | None = None
    for name in names:
        match = _PLAN.match(name)
        if match is None:
            continue
        index, count = int(match.group(1)), int(match.group(2))
        if not 0 <= index < count:
            continue
        path = state_dir / name
        plans.setdefault(count, {})[index] = path
        mtime = path.stat().st_mtime
        if newest is None or mtime > newest[0]:
            newest = (mtime, count)
    locks = shard_locks(state_dir)
    live_counts = {item.shard.count for item in locks if item.live}
    if live_counts:
        count = max(live_counts)
    elif newest is not None:
        whole_plan = state_dir / "last-plan.json"
        if whole_plan.exists() and whole_plan.stat().st_mtime > newest[0]:
            return None
        count = newest[1]
    else:
        return None
    holders = {item.shard.index: item for item in locks if item.shard.count == count}
    shards: list[ShardStatus] = []
    union: list[int] | None = []
    for index in range(count):
        shard = Shard(index, count)
        plan_path = plans[count].get(index) if count in plans else None
        series = _plan_digests(state_dir, plan_path) if plan_path is not None else None
        if series is None:
            union = None
        elif union is not None:
            union.extend(series)
        done = failed = 0
        if series is not None:  # one O(log n) look-up per planned series: no record is held
            for digest in series:
                brief = journal.brief(digest)
                if brief is not None and brief[0] == "done":
                    done += 1
                elif brief is not None and brief[0] in ("failed", "damaged"):
                    failed += 1
        else:  # no plan written yet: the shard's share of what the journal knows, streamed
            for record in journal.iter_latest("done", "failed"):
                if shard.owns(record.series_uid):
                    done += record.status == "done"
                    failed += record.status != "done"
        lock = holders.get(index)
        report = _read_json(state_dir / f"last-report.{shard.name}.json")
        if lock is not None and lock.live:
            state = "running"
        elif report is None:
            state = "not started" if series is None else "interrupted"
        elif report.get("interrupted"):
            state = "interrupted"
        elif report.get("fatal_error"):
            state = "fatal"
        else:
            state = "done" if report.get("exit_code") == 0 else "failed"
        shards.append(
            ShardStatus(
                shard=shard,
                state=state,
                planned=len(series) if series is not None else None,
                done=done,
                failed=failed,
                pending=len(series) - done - failed if series is not None else None,
                holder=lock.holder.describe() if lock is not None and lock.live else None,
            )
        )
    planned = SortedDigests(sorted_unique(union)) if union is not None else None
    return SplitStatus(count=count, shards=tuple(shards), planned=planned)


def _plan_digests(state_dir: Path, plan_path: Path) -> SortedDigests | None:
    """A shard's plan as UID digests: the digests file a run writes, or an older UID list."""
    document = _read_json(plan_path)
    if document is None:
        return None
    raw = document.get("series")
    if isinstance(raw, list):
        return SortedDigests.of_uids(str(uid) for uid in raw)
    name = document.get("digests")
    if not isinstance(name, str) or "/" in name:
        return None
    try:
        return SortedDigests.from_bytes((state_dir / name).read_bytes())
    except (OSError, ValueError) as exc:
        raise DestinationError(f"cannot read {state_dir / name}: {exc}") from exc
