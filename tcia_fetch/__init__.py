"""tcia-fetch: verified, resumable, high-throughput bulk downloads from TCIA's NBIA REST API.

The public surface, for scripts and notebooks::

    import tcia_fetch

    report = tcia_fetch.run("job.toml", tcia_fetch.RunOptions(out="/data/tcia"))        # sync
    report = await tcia_fetch.fetch("job.toml", tcia_fetch.RunOptions(out="/data/tcia"))  # async

    async with tcia_fetch.NBIAClient() as client:
        rows = await client.series(collection="HNSCC", modality="CT")

Everything else lives in private modules and may change; ``tests/test_exports.py`` pins this list.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.config import ClientSettings
from tcia_fetch.engine.report import RunReport, SeriesFailure
from tcia_fetch.engine.run import RunOptions, fetch, plan, run
from tcia_fetch.errors import (
    InputError,
    IntegrityError,
    SeriesUnavailableError,
    StorageError,
    TciaFetchError,
    TransportError,
)
from tcia_fetch.job.jobfile import JobSpec, load_job

try:
    __version__ = version("tcia-fetch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = [
    "ClientSettings",
    "InputError",
    "IntegrityError",
    "JobSpec",
    "NBIAClient",
    "RunOptions",
    "RunReport",
    "SeriesFailure",
    "SeriesUnavailableError",
    "StorageError",
    "TciaFetchError",
    "TransportError",
    "__version__",
    "fetch",
    "load_job",
    "plan",
    "run",
]
