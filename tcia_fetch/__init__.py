"""tcia-fetch: verified, resumable, high-throughput bulk downloads from TCIA's NBIA REST API.

The public surface, for scripts and notebooks::

    import tcia_fetch as tf

    df = tf.series(collection="HNSCC", modality="CT")       # pandas DataFrames (tcia-fetch[pandas])
    report = tf.download(df[df.ImageCount > 50], out="data/")  # also inside Jupyter's running loop

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
    MissingDependencyError,
    SeriesUnavailableError,
    StorageError,
    TciaFetchError,
    TransportError,
)
from tcia_fetch.job.jobfile import JobSpec, load_job
from tcia_fetch.notebook import (
    DownloadReport,
    EmptyResultWarning,
    body_parts,
    body_parts_async,
    collections,
    collections_async,
    configure,
    download,
    download_async,
    manufacturers,
    manufacturers_async,
    modalities,
    modalities_async,
    patients,
    patients_async,
    series,
    series_async,
    series_size,
    series_size_async,
    studies,
    studies_async,
)

try:
    __version__ = version("tcia-fetch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = [
    "ClientSettings",
    "DownloadReport",
    "EmptyResultWarning",
    "InputError",
    "IntegrityError",
    "JobSpec",
    "MissingDependencyError",
    "NBIAClient",
    "RunOptions",
    "RunReport",
    "SeriesFailure",
    "SeriesUnavailableError",
    "StorageError",
    "TciaFetchError",
    "TransportError",
    "__version__",
    "body_parts",
    "body_parts_async",
    "collections",
    "collections_async",
    "configure",
    "download",
    "download_async",
    "fetch",
    "load_job",
    "manufacturers",
    "manufacturers_async",
    "modalities",
    "modalities_async",
    "patients",
    "patients_async",
    "plan",
    "run",
    "series",
    "series_async",
    "series_size",
    "series_size_async",
    "studies",
    "studies_async",
]
