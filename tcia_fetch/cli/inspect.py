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
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tcia_fetch.cli.common import die
from tcia_fetch.cli.progress import format_bytes
from tcia_fetch.errors import EXIT_OK, EXIT_SOME_FAILED, DestinationError, TciaFetchError
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.lock import acquire_destination
from tcia_fetch.store.reconcile import DAMAGED_ON_DISK, Damage, recheck, summarize
from tcia_fetch.store.shardstate import SplitStatus, read_split_status

__all__ = ["status", "verify"]


def _open(dest: Path) -> tuple[Destination, Journal]:
    destination = Destination(dest)
    if not destination.state_dir.is_dir():
        raise DestinationError(
            f"{dest} holds no tcia-fetch state (no .tcia-fetch directory): nothing to inspect"
        )
    return destination, Journal.open(destination.state_dir, run_id="inspect")


def _last_planned(destination: Destination) -> list[str] | None:
    """Series UIDs the last run planned, from its plan file (None when no run wrote one)."""
    plan_file = destination.state_dir / "last-plan.json"
    if not plan_file.is_file():
        return None
    document = json.loads(plan_file.read_text(encoding="utf-8"))
    return [str(uid) for uid in document.get("series", [])]


@click.command("status")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(dest: Path, output_format: str) -> None:
    """Show what is done, failed and pending in DEST (from its journal; no network)."""
    try:
        destination, journal = _open(dest)
        planned = _last_planned(destination)
        split = read_split_status(destination.state_dir, journal.latest())
        if split is not None:  # a split job: the whole job's plan is the union of the shards' shares
            planned = split.planned
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
    if split is not None:
        document["shards"] = [item.as_dict() for item in split.shards]
    if output_format == "json":
        click.echo(json.dumps(document, indent=2))
        sys.exit(EXIT_OK)
    table = Table(title=f"tcia-fetch status: {dest}", show_header=False, box=None)
    table.add_row("done", f"{summary.done} series, {format_bytes(summary.done_bytes)}")
    table.add_row("failed", str(summary.failed))
    table.add_row("pending", "unknown (no plan recorded)" if planned is None else str(summary.pending))
    Console(highlight=False).print(table)
    if split is not None:
        _print_shards(split)
    if failures:
        failed = Table(title="failed series")
        failed.add_column("SeriesInstanceUID", overflow="fold")
        failed.add_column("reason")
        for failure in failures:
            failed.add_row(str(failure["SeriesInstanceUID"]), str(failure["reason"]))
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


def _record_damage(destination: Destination, damage: list[Damage]) -> None:
    """Mark damaged series in the journal so the next run re-fetches them (under the run lock)."""
    run_id = f"verify-{int(time.time())}-{os.getpid()}"
    with acquire_destination(destination.state_dir, run_id=run_id):
        writer = Journal.open(destination.state_dir, run_id=run_id)
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


@click.command("verify")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--md5/--no-md5", default=True, show_default=True, help="Re-hash every file (slower, thorough)."
)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def verify(dest: Path, md5: bool, output_format: str) -> None:
    """Re-check every published series in DEST against what was verified; report damage."""
    try:
        destination, journal = _open(dest)
        damage = recheck(destination, journal, check_md5=md5)
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
                    str(row["SeriesInstanceUID"]), str(row["path"]), "; ".join(map(str, row["problems"]))
                )
            console.print(table)
            console.print("rerun the job with the same --out to re-download damaged series")
    sys.exit(EXIT_SOME_FAILED if rows else EXIT_OK)
