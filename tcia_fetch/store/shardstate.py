"""Where each shard of a split job stands, read from the destination (for ``tcia-fetch status``).

Every shard run leaves ``last-plan.shard-K-of-N.json`` (the series of its share), and
``last-report.shard-K-of-N.json`` when it ends; while it runs it holds ``lock.shard-K-of-N``. From
these and the merged journal this module tells, per shard, whether it is running, finished,
failed or never ran, and counts done, failed and pending; the union of the shard plans is the
whole job's plan. The newest split wins when a destination saw several (a rerun with another N).

A bucket destination keeps the same files under ``<prefix>/.tcia-fetch/``, so one reader serves
both through a small view of the state area (a directory, or the bucket's keys with their
``LastModified`` and the bucket lock's own liveness rule).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from tcia_fetch.errors import DestinationError
from tcia_fetch.plan.shard import Shard
from tcia_fetch.store.digests import SortedDigests, sorted_unique
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.objstate import STATE_PREFIX
from tcia_fetch.store.runlock import shard_locks

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = ["ShardStatus", "SplitStatus", "read_bucket_split_status", "read_split_status"]

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


class _StateView(Protocol):
    """What the split status reads from a state area: a directory or a bucket's ``.tcia-fetch/``."""

    def plan_files(self) -> dict[str, float]:
        """Every ``last-plan*`` name in the state area, with when it was last written (epoch s)."""
        ...

    def read(self, name: str) -> bytes | None:
        """A state file's bytes (None when absent); bounded by the caller's plausibility check."""
        ...

    def live_shard_locks(self) -> list[tuple[Shard, str]]:
        """(shard, holder) of every shard lock whose holder still runs."""
        ...

    def describe(self, name: str) -> str:
        """Where ``name`` is, for messages."""
        ...


class _DirectoryView:
    """A local (or NFS/Lustre) state directory."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir

    def plan_files(self) -> dict[str, float]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise DestinationError(f"cannot list {self._dir}: {exc}") from exc
        found: dict[str, float] = {}
        for name in names:
            if name.startswith("last-plan"):
                try:
                    found[name] = (self._dir / name).stat().st_mtime
                except FileNotFoundError:
                    continue
        return found

    def read(self, name: str) -> bytes | None:
        path = self._dir / name
        try:
            if path.stat().st_size > _MAX_STATE_FILE_BYTES:
                raise DestinationError(f"{path} is implausibly large; refusing to read it")
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DestinationError(f"cannot read {path}: {exc}") from exc

    def live_shard_locks(self) -> list[tuple[Shard, str]]:
        return [(item.shard, item.holder.describe()) for item in shard_locks(self._dir) if item.live]

    def describe(self, name: str) -> str:
        return str(self._dir / name)


class _BucketView:
    """The state area ``s3://bucket/<prefix>/.tcia-fetch/`` of a bucket destination.

    Lists only the ``last-plan`` and ``lock`` keys (never the journal's many segment objects);
    a plan's age is its ``LastModified``, and a lock is live as the bucket lock judges it.
    """

    def __init__(self, destination: BucketDestination) -> None:
        self._destination = destination

    def plan_files(self) -> dict[str, float]:
        destination = self._destination
        root = destination.location.key(STATE_PREFIX) + "/"
        return {
            info.key[len(root) :]: info.modified
            for info in destination.store.list(root + "last-plan")
            if "/" not in info.key[len(root) :]
        }

    def read(self, name: str) -> bytes | None:
        destination = self._destination
        info = destination.store.head(destination.location.key(f"{STATE_PREFIX}/{name}"))
        if info is None:
            return None
        if info.size > _MAX_STATE_FILE_BYTES:  # judged before a byte of it is read
            raise DestinationError(f"{self.describe(name)} is implausibly large; refusing to read it")
        return destination.state.read(name)

    def live_shard_locks(self) -> list[tuple[Shard, str]]:
        return [(shard, holder) for _, shard, holder in self._destination.live_locks() if shard is not None]

    def describe(self, name: str) -> str:
        return self._destination.state.describe(name)


def _read_json(view: _StateView, name: str) -> dict[str, object] | None:
    data = view.read(name)
    if data is None:
        return None
    try:
        document = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise DestinationError(f"cannot read {view.describe(name)}: {exc}") from exc
    return document if isinstance(document, dict) else None


def read_split_status(state_dir: Path, journal: Journal) -> SplitStatus | None:
    """The newest split's status, or None when the destination was never run in shards (or when a
    whole-job run is more recent than every shard plan)."""
    return _split_status(_DirectoryView(state_dir), journal)


def read_bucket_split_status(destination: BucketDestination, journal: Journal) -> SplitStatus | None:
    """:func:`read_split_status` for an ``s3://`` destination: the same table from the bucket."""
    return _split_status(_BucketView(destination), journal)


def _split_status(view: _StateView, journal: Journal) -> SplitStatus | None:
    plans: dict[int, dict[int, str]] = {}
    newest: tuple[float, int] | None = None
    plan_files = view.plan_files()
    for name, mtime in plan_files.items():
        match = _PLAN.match(name)
        if match is None:
            continue
        index, count = int(match.group(1)), int(match.group(2))
        if not 0 <= index < count:
            continue
        plans.setdefault(count, {})[index] = name
        if newest is None or mtime > newest[0]:
            newest = (mtime, count)
    locks = view.live_shard_locks()
    live_counts = {shard.count for shard, _ in locks}
    if live_counts:
        count = max(live_counts)
    elif newest is not None:
        whole_plan = plan_files.get("last-plan.json")
        if whole_plan is not None and whole_plan > newest[0]:
            return None
        count = newest[1]
    else:
        return None
    holders = {shard.index: holder for shard, holder in locks if shard.count == count}
    shards: list[ShardStatus] = []
    union: list[int] | None = []
    for index in range(count):
        shard = Shard(index, count)
        plan_name = plans[count].get(index) if count in plans else None
        series = _plan_digests(view, plan_name) if plan_name is not None else None
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
        holder = holders.get(index)
        report = _read_json(view, f"last-report.{shard.name}.json")
        if holder is not None:
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
                holder=holder,
            )
        )
    planned = SortedDigests(sorted_unique(union)) if union is not None else None
    return SplitStatus(count=count, shards=tuple(shards), planned=planned)


def _plan_digests(view: _StateView, plan_name: str) -> SortedDigests | None:
    """A shard's plan as UID digests: the digests file a run writes, or an older UID list."""
    document = _read_json(view, plan_name)
    if document is None:
        return None
    raw = document.get("series")
    if isinstance(raw, list):
        return SortedDigests.of_uids(str(uid) for uid in raw)
    name = document.get("digests")
    if not isinstance(name, str) or "/" in name:
        return None
    data = view.read(name)
    if data is None:
        raise DestinationError(f"{view.describe(plan_name)} names {name}, which is missing")
    try:
        return SortedDigests.from_bytes(data)
    except ValueError as exc:
        raise DestinationError(f"cannot read {view.describe(name)}: {exc}") from exc
