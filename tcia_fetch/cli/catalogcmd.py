"""``tcia-fetch catalog DEST``: rewrite the Parquet catalog from the journal.

Also the child process every run starts at its end (engine/run.py), while the downloader waits:
so this module imports only what writing the tables needs (no rich, no HTTP stack, no pydantic),
which keeps that wait and the child's memory small.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from tcia_fetch.cli._dest import open_inspected
from tcia_fetch.cli._owner import owns_interpreter
from tcia_fetch.cli.common import die
from tcia_fetch.errors import EXIT_OK, TciaFetchError
from tcia_fetch.store.destination import Destination

__all__ = ["catalog"]


@click.command("catalog")
@click.argument("dest")
def catalog(dest: str) -> None:
    """(Re)write DEST's catalog.parquet and instances.parquet from its journal (no network to TCIA)."""
    from tcia_fetch._parentdeath import die_with_parent
    from tcia_fetch.store.catalog import CATALOG_NAME, INSTANCES_NAME, import_pyarrow_lean, write_catalogs

    die_with_parent()  # a run's catalog child never outlives the run (a no-op for a user's command)
    if owns_interpreter():
        # This process only writes two tables, then exits: the C allocator keeps less resident
        # than Arrow's default mimalloc pool here, and pyarrow needs no numpy for them (a
        # user's own ARROW_DEFAULT_MEMORY_POOL wins).
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        import_pyarrow_lean()

    try:
        destination, journal = open_inspected(dest)
        counted = journal.counts().done
        records = journal.iter_latest("done")  # streamed: bounded memory however large the job
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
    click.echo(f"{counted} series: {', '.join(where)}")
    sys.exit(EXIT_OK)
