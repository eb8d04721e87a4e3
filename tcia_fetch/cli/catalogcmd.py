"""``tcia-fetch catalog DEST``: rewrite the Parquet catalog from the journal.

A run writes the same tables itself at its end (engine/run.py); this command is for a
destination whose catalog is missing or stale (written by an older version, or a run that stopped
before its books).
"""

from __future__ import annotations

import sys

import click

from tcia_fetch.cli._dest import open_inspected
from tcia_fetch.cli.common import die
from tcia_fetch.errors import EXIT_OK, TciaFetchError

__all__ = ["catalog"]


@click.command("catalog")
@click.argument("dest")
def catalog(dest: str) -> None:
    """(Re)write DEST's catalog.parquet and instances.parquet from its journal (no network to TCIA)."""
    from tcia_fetch.store.catalog import write_destination_catalogs

    try:
        destination, journal = open_inspected(dest)
        counted = journal.counts().done
        # streamed: bounded memory however large the job
        where = write_destination_catalogs(journal.iter_latest("done"), destination)
    except TciaFetchError as exc:
        die(exc)
    click.echo(f"{counted} series: {', '.join(where)}")
    sys.exit(EXIT_OK)
