"""``tcia-fetch run`` and ``tcia-fetch plan``: the batch job, and its dry run.

Contract (other tooling depends on it): ``tcia-fetch run JOB --out DIR [--base-url URL]
[--concurrency N] [--report FILE]``; JOB is a job file, a ``.tcia`` manifest or a CSV/TSV;
``--base-url`` beats the job file and ``TCIA_FETCH_BASE_URL``; the exit code is 0 only when
every planned series is verified on disk.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Literal

import anyio
import click
from rich.console import Console
from rich.table import Table

from tcia_fetch.cli._show import cell, json_text, shown
from tcia_fetch.cli.common import CommandInterruptedError, die, exit_interrupted, run_command
from tcia_fetch.cli.progress import ProgressReporter, format_bytes
from tcia_fetch.engine.report import RunReport, RunStats
from tcia_fetch.engine.run import RunOptions, fetch, plan
from tcia_fetch.errors import InputError
from tcia_fetch.plan.model import PlannedSeries, PlanSummary
from tcia_fetch.plan.suggest import unmatched_tables

__all__ = ["parse_size", "plan_command", "print_report", "run_command_cli"]

_SIZE_RE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?(?:/s)?\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}


def parse_size(text: str, *, option: str) -> float:
    """Parse ``50MB``, ``2.5GiB/s``, ``1000000`` into bytes; a clear InputError otherwise."""
    match = _SIZE_RE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InputError(f"cannot read {text!r} as a size (examples: 50MB, 2GiB, 1000000)", source=option)
    return float(match.group(1)) * _UNITS[unit]


def _options(**kwargs: object) -> RunOptions:
    return RunOptions(**kwargs)  # type: ignore[arg-type]


@click.command("run")
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "-o", help="Destination: a directory, or s3://bucket/prefix (AWS settings apply).")
@click.option("--base-url", help="API root, e.g. https://nbia.cancerimagingarchive.net/nbia-api/services/v4/")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="Config file (TOML)."
)
@click.option("--concurrency", "-j", type=click.IntRange(1, 256), help="Most downloads in flight at once.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the JSON report here.",
)
@click.option("--retry-failed", is_flag=True, help="Only retry the series that failed in earlier runs.")
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0.0, min_open=True),
    help="Most download requests started per second.",
)
@click.option("--max-bandwidth", help="Bandwidth cap over all downloads, e.g. 50MB (per second).")
@click.option(
    "--layout",
    help="Directory layout: classic, descriptive, flat, or a template like {Collection}/{SeriesInstanceUID}.",
)
@click.option(
    "--keep",
    type=click.Choice(["dicom", "zip", "tar.zst"]),
    help="Keep extracted DICOM (default), the verified zip, or one tar.zst per series.",
)
@click.option("--md5/--no-md5", default=None, help="Check every file's MD5 (default: on).")
@click.option("--fsync/--no-fsync", default=True, show_default=True, help="fsync files before publishing.")
@click.option(
    "--skip-invalid", is_flag=True, help="Report manifest/CSV lines that are not UIDs instead of refusing."
)
@click.option(
    "--shard",
    metavar="K/N",
    help="Run shard K of N of the job (K from 0 to N-1, e.g. $SLURM_ARRAY_TASK_ID/16); the shards share "
    "one destination and split --concurrency, --max-rate and --max-bandwidth.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Download on a Dask cluster: tcp://host:port of a running scheduler, or local:N for N local "
    "worker processes (pip install 'tcia-fetch[dask]').",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress; only the final summary and errors.")
@click.option(
    "--log-interval",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Seconds between progress lines when output is not a terminal.",
)
def run_command_cli(
    job: Path,
    out: str | None,
    base_url: str | None,
    config_file: Path | None,
    concurrency: int | None,
    report_path: Path | None,
    retry_failed: bool,
    max_rate: float | None,
    max_bandwidth: str | None,
    layout: str | None,
    keep: Literal["dicom", "zip", "tar.zst"] | None,
    md5: bool | None,
    fsync: bool,
    skip_invalid: bool,
    shard: str | None,
    scheduler: str | None,
    quiet: bool,
    log_interval: float,
) -> None:
    """Download every series a JOB names, verified, into --out; resumes when rerun.

    JOB is a job file (.toml), a .tcia manifest, or a CSV/TSV with a SeriesInstanceUID column.
    Exit codes: 0 all verified, 1 some series failed, 2 bad input, 3 fatal, 130 interrupted.
    """
    try:
        options = RunOptions(
            out=out,
            base_url=base_url,
            config_file=config_file,
            concurrency=concurrency,
            report_path=report_path,
            retry_failed=retry_failed,
            max_requests_per_s=max_rate,
            max_bytes_per_s=parse_size(max_bandwidth, option="--max-bandwidth") if max_bandwidth else None,
            layout=layout,
            keep=keep,
            verify_md5=md5,
            fsync=fsync,
            skip_invalid=skip_invalid,
            shard=shard,
            scheduler=scheduler,
        )
    except InputError as exc:
        die(exc)
    stats = RunStats()
    reporter = ProgressReporter(stats, mode=ProgressReporter.pick_mode(quiet=quiet), interval_s=log_interval)

    async def main() -> RunReport:
        stop = anyio.Event()
        outcome: list[RunReport] = []
        async with anyio.create_task_group() as group:
            group.start_soon(reporter.run, stop)
            try:
                outcome.append(await fetch(job, options, stats=stats, on_event=reporter.on_event))
            finally:
                stop.set()
        return outcome[0]

    try:
        report = run_command(main)
    except CommandInterruptedError as interrupted:
        exit_interrupted(interrupted.signum)
    print_report(report, quiet=quiet)
    sys.exit(report.exit_code)


def print_report(report: RunReport, *, quiet: bool = False, console: Console | None = None) -> None:
    """The end-of-run summary: counts, volume, speed, and every failure with its reason."""
    console = console or Console(highlight=False)
    rate = report.dicom_bytes / report.duration_s if report.duration_s > 0 else 0.0
    table = Table(title="tcia-fetch run", show_header=False, box=None)
    table.add_row("planned", str(report.planned))
    table.add_row("done", str(report.done))
    table.add_row("skipped (already on disk)", str(report.skipped))
    table.add_row("failed", f"[red]{report.failed}[/red]" if report.failed else "0")
    table.add_row(
        "data",
        f"{format_bytes(report.dicom_bytes)} DICOM in {report.duration_s:.1f}s ({format_bytes(rate)}/s)",
    )
    table.add_row("retries / throttled", f"{report.retries} / {report.throttled}")
    table.add_row("destination", cell(report.destination))
    console.print(table)
    # One plain line per failure, never wrapped: batch logs are grepped for UIDs. Reasons and
    # UIDs come from the server: no markup, controls escaped, credentials scrubbed (_show.py).
    for failure in report.failures:
        console.print("[red]failed[/red] ", end="", soft_wrap=True)
        console.print(
            shown(f"{failure.series_uid}: {failure.reference}: {failure.reason}"),
            soft_wrap=True,
            markup=False,
        )
    empty = [finding.get("message", "") for finding in report.plan.get("empty_queries", [])]
    for error in report.plan_errors:
        queried = error in report.plan.get("query_errors", [])
        label = "matched nothing" if error in empty else "query failed" if queried else "error"
        console.print(f"[red]{label}[/red]: ", end="", soft_wrap=True)
        console.print(shown(error, keep_newlines=True), soft_wrap=True, markup=False)
    for message in empty:
        if message not in report.plan_errors:
            console.print("[yellow]note[/yellow]: ", end="", soft_wrap=True)
            console.print(shown(message, keep_newlines=True), soft_wrap=True, markup=False)
    if not quiet and report.input_problems:
        console.print(
            f"{len(report.input_problems)} input line(s) were not UIDs; see the report's input_problems"
        )
    status = "all series verified" if report.ok else f"exit code {report.exit_code}"
    report_file = f"{report.destination.rstrip('/')}/.tcia-fetch/last-report.json"
    console.print(f"{status}; report: {shown(report_file)}", soft_wrap=True, markup=False)


@click.command("plan")
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--base-url", help="API root, e.g. https://nbia.cancerimagingarchive.net/nbia-api/services/v4/")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="Config file (TOML)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the plan (every series with its expected size) as JSON here.",
)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def plan_command(
    job: Path, base_url: str | None, config_file: Path | None, json_path: Path | None, output_format: str
) -> None:
    """Show what a JOB would download (series, instances, bytes per collection) without downloading."""
    options = RunOptions(base_url=base_url, config_file=config_file)
    try:
        listing = json_path is not None or output_format == "json"
        items, summary = run_command(lambda: plan(job, options, keep_series=listing))
    except CommandInterruptedError as interrupted:
        exit_interrupted(interrupted.signum)
    if listing:
        document = {"summary": summary.as_dict(), "series": [item.as_dict() for item in items]}
        if json_path is not None:
            json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        if output_format == "json":
            click.echo(json_text(document))
    if output_format != "json":
        _print_plan(items, summary)
    unmatched = unmatched_tables(summary.empty_queries)
    sys.exit(1 if summary.problems or summary.query_errors or unmatched else 0)


def _print_plan(items: list[PlannedSeries], summary: PlanSummary) -> None:
    console = Console(highlight=False)
    table = Table(
        title=f"plan: {summary.series} series, {summary.instances} instances, "
        f"{format_bytes(summary.total_bytes)}"
    )
    table.add_column("Collection")
    table.add_column("series", justify="right")
    table.add_column("instances", justify="right")
    table.add_column("size", justify="right")
    for name, totals in sorted(summary.collections.items()):
        table.add_row(cell(name), str(totals.series), str(totals.instances), format_bytes(totals.total_bytes))
    console.print(table)
    if summary.duplicates:
        console.print(f"{summary.duplicates} duplicate UID(s) ignored")
    for problem in summary.problems:
        console.print("[red]cannot plan[/red] ", end="", soft_wrap=True)
        console.print(
            shown(f"{problem.series_uid} ({problem.origin}): {problem.reason}"), soft_wrap=True, markup=False
        )
    for error in summary.query_errors:
        console.print("[red]query failed[/red]: ", end="", soft_wrap=True)
        console.print(shown(error, keep_newlines=True), soft_wrap=True, markup=False)
    unmatched = unmatched_tables(summary.empty_queries)
    for finding in summary.empty_queries:
        label = "[red]matched nothing[/red]: " if finding in unmatched else "[yellow]note[/yellow]: "
        console.print(label, end="", soft_wrap=True)
        console.print(shown(finding.message, keep_newlines=True), soft_wrap=True, markup=False)
    del items
