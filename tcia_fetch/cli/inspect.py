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
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from tcia_fetch.cli.common import die
from tcia_fetch.cli.progress import format_bytes
from tcia_fetch.errors import EXIT_OK, EXIT_SOME_FAILED, DestinationError, TciaFetchError
from tcia_fetch.store.archive_check import merge_damage, recheck_archives
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.home import home_lock
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.location import BucketLocation, parse_destination
from tcia_fetch.store.objjournal import open_bucket_journal
from tcia_fetch.store.reconcile import DAMAGED_ON_DISK, Damage, recheck, summarize

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination


def open_bucket_for_inspection(location: BucketLocation) -> tuple[BucketDestination, Journal]:
    """An s3:// destination and its journal, read from the bucket (no lock; no local state kept)."""
    from tcia_fetch.store.objhome import BucketDestination

    destination = BucketDestination(location)
    destination.store.check_bucket()
    if not destination.state.list(""):
        raise DestinationError(
            f"{location.url} holds no tcia-fetch state (no .tcia-fetch/): nothing to inspect"
        )
    mirror = Path(tempfile.mkdtemp(prefix="tcia-fetch-inspect-"))
    try:
        journal = open_bucket_journal(destination.state, mirror / "state", run_id="inspect")
    finally:
        shutil.rmtree(mirror, ignore_errors=True)
    return destination, journal

__all__ = ["status", "verify"]


def _open(dest_text: str) -> tuple[Destination | BucketDestination, Journal]:
    location = parse_destination(dest_text, source="DEST")
    if isinstance(location, BucketLocation):
        return open_bucket_for_inspection(location)
    dest = location
    destination = Destination(dest)
    if not destination.state_dir.is_dir():
        raise DestinationError(
            f"{dest} holds no tcia-fetch state (no .tcia-fetch directory): nothing to inspect"
        )
    return destination, Journal.open(destination.state_dir, run_id="inspect")


def _last_planned(destination: Destination | BucketDestination) -> list[str] | None:
    """Series UIDs the last run planned, from its plan file (None when no run wrote one)."""
    if not isinstance(destination, Destination):
        text = destination.state.read("last-plan.json")
        if text is None:
            return None
        document = json.loads(text)
        return [str(uid) for uid in document.get("series", [])]
    plan_file = destination.state_dir / "last-plan.json"
    if not plan_file.is_file():
        return None
    document = json.loads(plan_file.read_text(encoding="utf-8"))
    return [str(uid) for uid in document.get("series", [])]


@click.command("status")
@click.argument("dest")
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(dest: str, output_format: str) -> None:
    """Show what is done, failed and pending in DEST (from its journal; no network)."""
    try:
        destination, journal = _open(dest)
        planned = _last_planned(destination)
        summary = summarize(journal, planned)
    except TciaFetchError as exc:
        die(exc)
    failures = [
        {"SeriesInstanceUID": uid, "reason": f"{record.reference}: {record.reason}"}
        for uid, record in sorted(journal.latest().items())
        if record.status == "failed"
    ]
    document: dict[str, object] = {
        "done": summary.done,
        "done_bytes": summary.done_bytes,
        "failed": summary.failed,
        "pending": summary.pending if planned is not None else None,
        "failures": failures,
    }
    if output_format == "json":
        click.echo(json.dumps(document, indent=2))
        sys.exit(EXIT_OK)
    table = Table(title=f"tcia-fetch status: {dest}", show_header=False, box=None)
    table.add_row("done", f"{summary.done} series, {format_bytes(summary.done_bytes)}")
    table.add_row("failed", str(summary.failed))
    table.add_row("pending", "unknown (no plan recorded)" if planned is None else str(summary.pending))
    Console(highlight=False).print(table)
    if failures:
        failed = Table(title="failed series")
        failed.add_column("SeriesInstanceUID", overflow="fold")
        failed.add_column("reason")
        for failure in failures:
            failed.add_row(str(failure["SeriesInstanceUID"]), str(failure["reason"]))
        Console(highlight=False).print(failed)
    sys.exit(EXIT_OK)


def _record_damage(destination: Destination | BucketDestination, damage: list[Damage]) -> None:
    """Mark damaged series in the journal so the next run re-fetches them (under the run lock)."""
    run_id = f"verify-{int(time.time())}-{os.getpid()}"
    lock = home_lock(destination, run_id)
    try:
        writer = (
            Journal.open(destination.state_dir, run_id=run_id)
            if isinstance(destination, Destination)
            else destination.open_journal(run_id)
        )
        latest = writer.latest()
        for item in damage:
            record = latest.get(item.series_uid)
            if record is None:
                continue
            writer.append(
                replace(
                    record,
                    status="failed",
                    at=time.time(),
                    run_id=run_id,
                    reason=f"damaged on disk: {item.reason}",
                    reference=DAMAGED_ON_DISK,
                )
            )
        writer.close()
    finally:
        lock.release()


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
    try:
        destination, journal = _open(dest)
        if isinstance(destination, Destination):
            damage = recheck(destination, journal, check_md5=md5)
            if md5:
                damage = merge_damage(damage, recheck_archives(destination, journal))
        else:
            damage = destination.recheck(journal, check_md5=md5)
        if damage:
            _record_damage(destination, damage)
    except TciaFetchError as exc:
        die(exc)
    done = sum(1 for record in journal.latest().values() if record.status == "done")
    rows = [
        {"SeriesInstanceUID": item.series_uid, "path": item.path or "", "reason": item.reason}
        for item in damage
    ]
    if output_format == "json":
        click.echo(json.dumps({"checked": done, "damaged": rows}, indent=2))
    else:
        console = Console(highlight=False)
        if not rows:
            console.print(f"[green]{done} series checked, no damage[/green]")
        else:
            table = Table(title=f"{len(rows)} damaged series of {done}")
            table.add_column("SeriesInstanceUID", overflow="fold")
            table.add_column("path")
            table.add_column("problem")
            for row in rows:
                table.add_row(
                    str(row["SeriesInstanceUID"]), str(row["path"]), str(row["reason"])
                )
            console.print(table)
            console.print("rerun the job with the same --out to re-download damaged series")
    sys.exit(EXIT_SOME_FAILED if rows else EXIT_OK)


@click.command("catalog")
@click.argument("dest")
def catalog(dest: str) -> None:
    """(Re)write DEST's catalog.parquet and instances.parquet from its journal (no network to TCIA)."""
    from tcia_fetch.store.catalog import CATALOG_NAME, INSTANCES_NAME, write_catalogs

    try:
        destination, journal = _open(dest)
        records = sorted(
            (record for record in journal.latest().values() if record.status == "done"),
            key=lambda record: record.path or "",
        )
        if isinstance(destination, Destination):
            written = write_catalogs(records, destination.root)
            where = [str(path) for path in written]
        else:
            scratch = Path(tempfile.mkdtemp(prefix="tcia-fetch-catalog-"))
            try:
                write_catalogs(records, scratch)
                where = []
                for name in (CATALOG_NAME, INSTANCES_NAME):
                    key = destination.location.key(name)
                    destination.store.upload_file(key, scratch / name)
                    where.append(f"s3://{destination.store.bucket}/{key}")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except TciaFetchError as exc:
        die(exc)
    click.echo(f"{len(records)} series: {', '.join(where)}")
    sys.exit(EXIT_OK)
