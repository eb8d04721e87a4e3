"""Open a destination's recorded state for a command that only reads it (or rewrites derived files).

Shared by ``status``, ``verify`` and ``catalog``. Kept apart from those commands' module on
purpose: ``catalog`` imports this and nothing of the display stack, so it starts in less
time and memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tcia_fetch.errors import DestinationError
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.location import BucketLocation, parse_destination

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = ["open_bucket_for_inspection", "open_inspected"]


def open_bucket_for_inspection(location: BucketLocation) -> tuple[BucketDestination, Journal]:
    """An s3:// destination and its journal, read from the bucket (no lock; no local state kept)."""
    from tcia_fetch.store.objhome import BucketDestination

    destination = BucketDestination(location)
    destination.store.check_bucket()
    if not destination.state.list(""):
        raise DestinationError(
            f"{location.url} holds no tcia-fetch state (no .tcia-fetch/): nothing to inspect"
        )
    return destination, Journal.open(destination.state, run_id="inspect")


def open_inspected(dest_text: str | Path) -> tuple[Destination | BucketDestination, Journal]:
    """DEST (a directory or s3:// URL) and its journal; DestinationError when it holds no state."""
    location = parse_destination(str(dest_text), source="DEST")
    if isinstance(location, BucketLocation):
        return open_bucket_for_inspection(location)
    destination = Destination(location)
    if not destination.state_dir.is_dir():
        raise DestinationError(
            f"{location} holds no tcia-fetch state (no .tcia-fetch directory): nothing to inspect"
        )
    return destination, Journal.open(destination.state_dir, run_id="inspect")
