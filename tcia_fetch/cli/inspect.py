"""``tcia-fetch status DEST`` and ``tcia-fetch verify DEST``: what is on disk, and is it intact.

Both read the destination's journal; neither talks to the server. ``status`` counts done,
failed and pending series (pending = planned by the last run and not yet done or failed).
``verify`` re-checks every published file against the journal's record of what was verified
(names, sizes and, by default, MD5s) and reports damage; its exit code is 1 when anything is
damaged, so it can gate a pipeline. Damage is also recorded in the journal (reference
``damaged-on-disk``), so the next ``run`` of the job fetches those series again and swaps them in.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tcia_fetch.cli._dest import open_inspected as _open
from tcia_fetch.cli._show import cell, json_text, shown
from tcia_fetch.cli.common import die
from tcia_fetch.cli.progress import format_bytes
from tcia_fetch.errors import EXIT_OK, EXIT_SOME_FAILED, DestinationError, JournalError, TciaFetchError
from tcia_fetch.store.archive_check import merge_damage, recheck_archives
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.digests import LAST_PLAN_DIGESTS, GrowingDigestSet, SortedDigests, uid_digest
from tcia_fetch.store.home import home_lock
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.reconcile import DAMAGED_ON_DISK, Damage, DestinationStatus, iter_damage, summarize
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.store.shardstate import SplitStatus, read_bucket_split_status, read_split_status
from tcia_fetch.store.statestore import StateStorage

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = ["status", "verify"]

_T = TypeVar("_T")
_READ_ATTEMPTS: Final = 5
#: Damaged series listed (with reasons) by ``verify``; all of them are counted and recorded.
_DAMAGE_LISTED: Final = 10_000
_DAMAGE_BATCH: Final = 1_000
_GENERIC_DAMAGE: Final = "files differ from the verified record (tcia-fetch verify)"
#: Damaged series recorded per round before the journal is compacted (bounds the memory held).
_DAMAGE_ROUND: Final = 50_000
#: How long a round waits for the compaction lease (a run cannot hold it: verify holds the lock).
_DAMAGE_LEASE_WAIT_S: Final = 60.0


def _last_planned(destination: Destination | BucketDestination) -> SortedDigests | None:
    """UID digests of the series the last run planned (None when no run wrote a plan file).

    Current runs write ``last-plan.digests`` (sorted 8-byte digests) beside a small JSON summary;
    older ones listed every UID in ``last-plan.json``, which is still read.
    """
    if not isinstance(destination, Destination):
        text = destination.state.read("last-plan.json")
        if text is None:
            return None
        try:
            document = json.loads(text)
            if isinstance(document.get("series"), list):
                return SortedDigests.of_uids(str(uid) for uid in document["series"])
            raw = destination.state.read(str(document.get("digests", LAST_PLAN_DIGESTS)))
            if raw is None:  # a plan summary without its digests: say so rather than count 0 done
                raise DestinationError("last-plan.json names a digests file that is not in the bucket")
            return SortedDigests.from_bytes(raw)
        except (ValueError, AttributeError) as exc:
            raise DestinationError(f"{destination.state.describe('last-plan.json')}: {exc}") from exc
    plan_file = destination.state_dir / "last-plan.json"
    if not plan_file.is_file():
        return None
    try:
        document = json.loads(plan_file.read_text(encoding="utf-8"))
        if isinstance(document.get("series"), list):
            return SortedDigests.of_uids(str(uid) for uid in document["series"])
        digests_file = destination.state_dir / str(document.get("digests", LAST_PLAN_DIGESTS))
        return SortedDigests.from_bytes(digests_file.read_bytes())
    except (OSError, ValueError, AttributeError) as exc:
        raise DestinationError(f"{plan_file}: cannot read the last plan: {exc}") from exc


def _with_retries(action: Callable[[], _T]) -> _T:
    """Run a read of the journal again when another process's compaction replaced it meanwhile."""
    for attempt in range(_READ_ATTEMPTS):
        try:
            return action()
        except JournalError as exc:
            if "compacted by another process" not in str(exc) or attempt == _READ_ATTEMPTS - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


@click.command("status")
@click.argument("dest")
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(dest: str, output_format: str) -> None:
    """Show what is done, failed and pending in DEST (from its journal; no network)."""

    def read() -> tuple[DestinationStatus, list[dict[str, str]], bool, SplitStatus | None]:
        destination, journal = _open(dest)
        planned = _last_planned(destination)
        if isinstance(destination, Destination):
            split = read_split_status(destination.state_dir, journal)
        else:  # a bucket: the same shard files, read from <prefix>/.tcia-fetch/
            split = read_bucket_split_status(destination, journal)
        if split is not None:  # a split job: the whole job's plan is the union of the shards' shares
            planned = split.planned
        summary = summarize(journal, planned)
        # Streamed: only the failed records are ever held (the table lists them all).
        found = [
            {"SeriesInstanceUID": record.series_uid, "reason": f"{record.reference}: {record.reason}"}
            for record in journal.iter_latest("failed")
        ]
        found.sort(key=lambda item: item["SeriesInstanceUID"])
        return summary, found, planned is not None, split

    try:
        summary, failures, has_plan, split = _with_retries(read)
    except TciaFetchError as exc:
        die(exc)
    document: dict[str, object] = {
        "done": summary.done,
        "done_bytes": summary.done_bytes,
        "failed": summary.failed,
        "pending": summary.pending if has_plan else None,
        "failures": failures,
    }
    if split is not None:
        document["shards"] = [item.as_dict() for item in split.shards]
    if output_format == "json":
        click.echo(json_text(document))
        sys.exit(EXIT_OK)
    table = Table(title=Text(f"tcia-fetch status: {shown(dest)}"), show_header=False, box=None)
    table.add_row("done", f"{summary.done} series, {format_bytes(summary.done_bytes)}")
    table.add_row("failed", str(summary.failed))
    table.add_row("pending", str(summary.pending) if has_plan else "unknown (no plan recorded)")
    Console(highlight=False).print(table)
    if split is not None:
        _print_shards(split)
    if failures:
        failed = Table(title="failed series")
        failed.add_column("SeriesInstanceUID", overflow="fold")
        failed.add_column("reason")
        for failure in failures:
            failed.add_row(cell(failure["SeriesInstanceUID"]), cell(failure["reason"]))
        Console(highlight=False).print(failed)
    sys.exit(EXIT_OK)


def _print_shards(split: SplitStatus) -> None:
    table = Table(title=f"shards ({split.count})")
    for column in ("shard", "state", "planned", "done", "failed", "pending", "held by"):
        table.add_column(
            column, justify="right" if column in ("planned", "done", "failed", "pending") else "left"
        )
    for item in split.shards:
        table.add_row(
            item.shard.label,
            item.state,
            "?" if item.planned is None else str(item.planned),
            str(item.done),
            str(item.failed),
            "?" if item.pending is None else str(item.pending),
            item.holder or "",
        )
    Console(highlight=False).print(table)


def _record_damage(
    destination: Destination | BucketDestination, damaged: SortedDigests, reasons: dict[str, str]
) -> None:
    """Mark damaged series in the journal so the next run re-fetches them (under the run lock).

    ``reasons`` holds the reasons of the listed series (the rest, past the listing limit, get a
    generic one). The damage is recorded in rounds of :data:`_DAMAGE_ROUND` series, each folded
    into the snapshot before the next: a view's records not yet compacted cost ~200 bytes each,
    so recording 600,000 at once used to hold them all (282 MB) and leave 1.4 KB per series of
    uncompacted segments in the state directory (issue 13). Each round streams the done records
    again: the ones already recorded are no longer done, so the rounds end.
    """
    run_id = f"verify-{int(time.time())}-{os.getpid()}"
    storage = destination.state_dir if isinstance(destination, Destination) else destination.state
    lock = home_lock(destination, run_id)
    try:
        while _record_damage_round(storage, run_id, damaged, reasons) >= _DAMAGE_ROUND:
            pass
    finally:
        lock.release()


def _record_damage_round(
    storage: Path | StateStorage, run_id: str, damaged: SortedDigests, reasons: dict[str, str]
) -> int:
    """Record up to :data:`_DAMAGE_ROUND` damaged series, compact; how many were recorded."""
    reader = Journal.open(storage, run_id=run_id)
    # The writer appends only (no view of its own, never compacts while the reader streams the
    # snapshot); the round's records are folded by a fresh view once the reader is done.
    writer = Journal(reader.storage, run_id=run_id, compact_every=2**62)
    recorded = 0
    batch: list[SeriesRecord] = []
    records = reader.iter_latest("done", among=damaged)
    try:
        for record in records:
            reason = reasons.get(record.series_uid, _GENERIC_DAMAGE)
            batch.append(
                replace(
                    record,
                    status="failed",
                    at=time.time(),
                    run_id=run_id,
                    reason=f"damaged on disk: {reason}",
                    reference=DAMAGED_ON_DISK,
                )
            )
            recorded += 1
            if len(batch) >= _DAMAGE_BATCH:
                writer.extend(batch)
                batch = []
            if recorded >= _DAMAGE_ROUND:
                break
        writer.extend(batch)
    finally:
        records.close()  # the snapshot stream it holds open
        writer.close()
    del reader, writer
    if recorded:
        Journal.open(storage, run_id=run_id).compact(wait_s=_DAMAGE_LEASE_WAIT_S)
    return recorded


@click.command("verify")
@click.argument("dest")
@click.option(
    "--md5/--no-md5", default=True, show_default=True, help="Re-hash every file (slower, thorough)."
)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def verify(dest: str, md5: bool, output_format: str) -> None:
    """Re-check every published series in DEST against what was verified; report damage."""

    def check() -> tuple[Destination | BucketDestination, list[Damage], SortedDigests, int, int]:
        destination, journal = _open(dest)
        listed: list[Damage] = []
        found = GrowingDigestSet()
        if isinstance(destination, Destination):
            damage_found: Iterator[Damage] | list[Damage] = iter_damage(destination, journal, check_md5=md5)
            if md5:  # tar.zst members are re-hashed against the archive's MD5SUMS
                damage_found = merge_damage(list(damage_found), recheck_archives(destination, journal))
        else:
            damage_found = destination.recheck(journal, check_md5=md5)
        for item in damage_found:
            found.add(uid_digest(item.series_uid))
            if len(listed) < _DAMAGE_LISTED:
                listed.append(item)
        listed.sort(key=lambda item: item.series_uid)
        return destination, listed, found.freeze(), len(found), journal.counts().done

    try:
        destination, damage, damaged, damaged_count, done = _with_retries(check)
        if damaged_count:
            _record_damage(destination, damaged, {item.series_uid: item.reason for item in damage})
    except TciaFetchError as exc:
        die(exc)
    rows = [
        {"SeriesInstanceUID": item.series_uid, "path": item.path or "", "reason": item.reason}
        for item in damage
    ]
    if output_format == "json":
        click.echo(json_text({"checked": done, "damaged": rows, "damaged_count": damaged_count}))
    else:
        console = Console(highlight=False)
        if not rows:
            console.print(f"[green]{done} series checked, no damage[/green]")
        else:
            shown = "" if len(rows) == damaged_count else f" (the first {len(rows)} listed)"
            table = Table(title=f"{damaged_count} damaged series of {done}{shown}")
            table.add_column("SeriesInstanceUID", overflow="fold")
            table.add_column("path")
            table.add_column("problem")
            for row in rows:
                table.add_row(cell(row["SeriesInstanceUID"]), cell(row["path"]), cell(row["reason"]))
            console.print(table)
            console.print("rerun the job with the same --out to re-download damaged series")
    sys.exit(EXIT_SOME_FAILED if damaged_count else EXIT_OK)
