"""``tcia-fetch sbatch JOB --out DEST --shards N``: print a Slurm array script that runs the job in shards."""

from __future__ import annotations

from pathlib import Path

import click

from tcia_fetch.cli.common import die
from tcia_fetch.cluster.sbatch import ArrayScript, render_sbatch
from tcia_fetch.errors import InputError
from tcia_fetch.store.location import parse_destination

__all__ = ["sbatch_command"]


@click.command("sbatch")
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--out",
    "-o",
    required=True,
    help="Destination every task can reach: a shared directory, or s3://bucket/prefix.",
)
@click.option("--shards", required=True, type=int, help="Array size: the job is split into this many shards.")
@click.option(
    "--time", "time_limit", default="24:00:00", show_default=True, help="Slurm time limit per task."
)
@click.option("--cpus", default=2, show_default=True, type=click.IntRange(1, 256), help="CPUs per task.")
@click.option("--mem", default="4G", show_default=True, help="Memory per task.")
@click.option("--partition", help="Slurm partition.")
@click.option("--account", help="Slurm account.")
@click.option("--max-parallel", type=int, help="Most array tasks running at once (array %N).")
@click.option("--concurrency", "-j", type=click.IntRange(1, 64), help="The job's total downloads in flight.")
@click.option(
    "--max-rate", type=click.FloatRange(min=0.0, min_open=True), help="The job's total request rate."
)
@click.option("--max-bandwidth", help="The job's total bandwidth, e.g. 200MB.")
def sbatch_command(
    job: Path,
    out: str,
    shards: int,
    time_limit: str,
    cpus: int,
    mem: str,
    partition: str | None,
    account: str | None,
    max_parallel: int | None,
    concurrency: int | None,
    max_rate: float | None,
    max_bandwidth: str | None,
) -> None:
    """Print an sbatch array script for JOB (submit it with `sbatch`); every task runs one shard."""
    run_options: list[str] = []
    if concurrency is not None:
        run_options += ["--concurrency", str(concurrency)]
    if max_rate is not None:
        run_options += ["--max-rate", repr(max_rate)]
    if max_bandwidth is not None:
        run_options += ["--max-bandwidth", max_bandwidth]
    try:
        text = render_sbatch(
            ArrayScript(
                job=job,
                out=parse_destination(out, source="--out"),
                shards=shards,
                time=time_limit,
                cpus=cpus,
                mem=mem,
                partition=partition,
                account=account,
                max_parallel=max_parallel,
                run_options=run_options,
            )
        )
    except InputError as exc:
        die(exc)
    click.echo(text, nl=False)
