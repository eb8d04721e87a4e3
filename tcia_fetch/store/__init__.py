"""The on-disk side of tcia-fetch: layouts, staging and atomic publish, the run journal, the
destination lock, startup reconciliation, metadata.csv and atomic small-file writes.

Everything here is synchronous (it blocks on the filesystem) except ``atomic.write_*_atomic``;
the engine calls the rest through ``anyio.to_thread.run_sync``. Modules:

* ``layout``        where a series lands (classic, descriptive, flat or a ``{Field}`` template)
* ``destination``   staging dirs, atomic publish and repair swaps, leftovers of dead runs
* ``records``       ``SeriesRecord`` / ``FileEntry``: what the journal stores
* ``journal``       append-only per-writer JSONL segments + zstd snapshot, merged on read
* ``lock``          one run per destination without ``flock``
* ``reconcile``     startup reconciliation, status counts, ``verify`` re-checks
* ``metadata_csv``  NBIA Data Retriever compatible ``metadata.csv``
* ``atomic``        temp + fsync + rename + fsync-dir writes
"""

from __future__ import annotations

from tcia_fetch.store.destination import Destination, FinalPathExistsError
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.layout import render_series_path
from tcia_fetch.store.lock import DestinationLock, acquire_destination
from tcia_fetch.store.reconcile import (
    Damage,
    DestinationStatus,
    Reconciliation,
    recheck,
    reconcile,
    summarize,
)
from tcia_fetch.store.records import FileEntry, SeriesRecord

__all__ = [
    "Damage",
    "Destination",
    "DestinationLock",
    "DestinationStatus",
    "FileEntry",
    "FinalPathExistsError",
    "Journal",
    "Reconciliation",
    "SeriesRecord",
    "acquire_destination",
    "recheck",
    "reconcile",
    "render_series_path",
    "summarize",
]
