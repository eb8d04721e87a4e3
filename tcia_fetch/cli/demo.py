"""``tcia-fetch demo``: the whole flow against the embedded fake NBIA server, faults included.

It starts the fake server on loopback with a small synthetic catalog, injects faults a real
archive produces (a 429 with Retry-After, a connection cut mid-stream, a flipped byte, a zip
member named ``../``, a series that is not public), writes a job file, runs it, shows the
report, runs it again to show resume, and then checks the outcome independently of the
engine: every good series on disk byte-for-byte equal to the server's files, the two bad
ones reported with the right reason and absent from the destination. Exit 0 means the
program behaved as it should, including reporting the faults it was given.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click
from rich.console import Console
from rich.table import Table

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.cli._show import shown
from tcia_fetch.cli.common import CommandInterruptedError, exit_interrupted, run_command
from tcia_fetch.cli.progress import ProgressReporter
from tcia_fetch.cli.runcmd import print_report
from tcia_fetch.engine.report import RunReport, RunStats
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.store.journal import Journal

if TYPE_CHECKING:  # the fake server is imported when the demo runs: `tcia-fetch run` never pays for it
    from tcia_fetch.testing import Catalog, FaultPlan, SeriesEntry

__all__ = ["demo"]


def _demo_catalog() -> Catalog:
    from tcia_fetch.testing import Catalog

    return Catalog.generate(
        seed=2026,
        collections=3,
        patients_per_collection=2,
        studies_per_patient=1,
        series_per_study=3,
        instances_per_series=(3, 12),
        instance_bytes=(20_000, 120_000),
    )


def _faults(catalog: Catalog) -> tuple[FaultPlan, SeriesEntry, SeriesEntry]:
    from tcia_fetch.testing import FaultKind, FaultPlan, FaultRule

    series = catalog.series
    unsafe, restricted = series[-1], series[-2]
    rules = [
        FaultRule(kind=FaultKind.RATE_LIMIT, series_uid=series[0].uid, times=1, retry_after="1"),
        FaultRule(kind=FaultKind.CUT, series_uid=series[1].uid, times=1, after_bytes=20_000),
        FaultRule(kind=FaultKind.FLIP_BYTE, series_uid=series[2].uid, times=1),
        FaultRule(kind=FaultKind.SERVER_ERROR, series_uid=series[3].uid, times=1),
        FaultRule(kind=FaultKind.ZIP_SLIP, series_uid=unsafe.uid, times=1000),
    ]
    return FaultPlan(rules=rules), unsafe, restricted


def _job_text(catalog: Catalog, restricted: SeriesEntry) -> str:
    collections = sorted({entry.collection for entry in catalog.series})
    quoted = ", ".join(f'"{name}"' for name in collections)
    return (
        "# Written by `tcia-fetch demo`: every series of the demo collections, plus one explicit UID.\n"
        '[output]\nlayout = "classic"\n\n'
        "[download]\nconcurrency = 4\n\n"
        "[verify]\nmd5 = true\n\n"
        f"[[query]]\ncollection = [{quoted}]\n\n"
        f'[series]\nuids = ["{restricted.uid}"]\n'
    )


async def _walk_through(client: NBIAClient, console: Console) -> None:
    collections = await client.collections()
    modalities = await client.modalities()
    console.print(f"collections on the server: {shown(', '.join(c for c in collections if c))}", markup=False)
    console.print(f"modalities: {shown(', '.join(m for m in modalities if m))}", markup=False)


def _check_outcome(
    out: Path,
    catalog: Catalog,
    unsafe: SeriesEntry,
    restricted: SeriesEntry,
    first: RunReport,
    second: RunReport,
) -> list[str]:
    """Independent oracle: compare the destination with the server's own files."""
    problems: list[str] = []
    failed = {failure.series_uid: failure.reference for failure in first.failures}
    if failed.get(unsafe.uid) != "unsafe-archive":
        problems.append(
            f"series with a ../ member should fail as unsafe-archive, got {failed.get(unsafe.uid)}"
        )
    if failed.get(restricted.uid) != "series-unavailable":
        problems.append(
            f"non-public series should fail as series-unavailable, got {failed.get(restricted.uid)}"
        )
    good = [entry for entry in catalog.series if entry.uid not in {unsafe.uid, restricted.uid}]
    if first.done != len(good) or first.failed != 2:
        problems.append(
            f"expected {len(good)} done and 2 failed, got {first.done} done and {first.failed} failed"
        )
    journal = Journal.open(out / ".tcia-fetch", run_id="demo-check")
    latest = journal.latest()
    for entry in good:
        record = latest.get(entry.uid)
        if record is None or record.status != "done" or record.path is None:
            problems.append(f"{entry.uid} is not recorded done")
            continue
        on_disk = {
            hashlib.md5(path.read_bytes()).hexdigest()
            for path in (out / record.path).iterdir()
            if path.name != "LICENSE"
        }
        expected = {instance.md5 for instance in entry.instance_files()}
        if on_disk != expected:
            problems.append(f"{entry.uid}: files on disk differ from the server's")
    for bad in (unsafe.uid, restricted.uid):
        if any(bad in str(path) for path in out.rglob("*") if ".tcia-fetch" not in path.parts):
            problems.append(f"{bad} left something in the destination")
    if second.done != 0 or second.skipped != len(good):
        problems.append(f"rerun should skip {len(good)} series and download none, got done={second.done}")
    return problems


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the demo's destination here (default: a temporary directory).",
)
@click.option("--quiet", "-q", is_flag=True, help="Only the summary and the verdict.")
def demo(out: Path | None, quiet: bool) -> None:
    """Run a real job against the embedded fake NBIA server, with injected faults, and check the result."""
    console = Console(highlight=False)
    catalog = _demo_catalog()
    faults, unsafe, restricted = _faults(catalog)
    workdir = out or Path(tempfile.mkdtemp(prefix="tcia-fetch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / "demo-job.toml"
    job_path.write_text(_job_text(catalog, restricted), encoding="utf-8")
    destination = workdir / "data"

    async def main() -> tuple[RunReport, RunReport]:
        from tcia_fetch.testing import FakeNBIA

        fake = FakeNBIA(catalog, faults=faults, restricted_series=frozenset({restricted.uid}))
        async with fake.serve() as server:
            console.rule("tcia-fetch demo")
            console.print(f"fake NBIA server on {server.base_url}")
            console.print(
                f"injected: 429+Retry-After, a cut stream, a flipped byte, a 500, "
                f"a ../ member ({unsafe.uid}), a non-public series ({restricted.uid})"
            )
            async with NBIAClient(base_url=server.base_url) as client:
                await _walk_through(client, console)
            options = RunOptions(out=destination, base_url=server.base_url, concurrency=4)
            console.rule(f"run 1: tcia-fetch run {job_path} --out {destination}")
            stats = RunStats()
            reporter = ProgressReporter(stats, mode=ProgressReporter.pick_mode(quiet=quiet), interval_s=5.0)
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(reporter.run, stop)
                try:
                    first = await fetch(job_path, options, stats=stats, on_event=reporter.on_event)
                finally:
                    stop.set()
            print_report(first, console=console)
            console.print(
                "(exit code 1 is the right answer here: the two series injected to fail cannot be fixed "
                "by retrying, so they are reported, and nothing of them is in the destination)"
            )
            console.rule("run 2: the same command again (resume: nothing left to fetch)")
            second = await fetch(job_path, options)
            print_report(second, console=console)
            return first, second

    try:
        first, second = run_command(main)
    except CommandInterruptedError as interrupted:
        exit_interrupted(interrupted.signum)
    problems = _check_outcome(destination, catalog, unsafe, restricted, first, second)
    verdict = Table(show_header=False, box=None)
    verdict.add_row("destination", str(destination))
    verdict.add_row("metadata.csv", str(destination / "metadata.csv"))
    console.print(verdict)
    if problems:
        for problem in problems:
            console.print(f"[red]demo check failed[/red]: {problem}")
        sys.exit(1)
    console.print(
        "[green]demo passed[/green]: every good series verified on disk, the injected faults "
        "retried or reported, nothing unverified in the destination, and the rerun resumed."
    )
    sys.exit(0)
