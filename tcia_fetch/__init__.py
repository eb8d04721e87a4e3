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

import importlib
from typing import TYPE_CHECKING, Any

from tcia_fetch._version import __version__

if TYPE_CHECKING:
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

# Where each public name lives. They are imported on first use (PEP 562), not here: importing
# any ``tcia_fetch.*`` module runs this file first, and the eager imports (aiohttp, pydantic,
# the engine) cost ~45 MB of RSS and a quarter of a second in processes that need none of
# them, such as ``tcia-fetch status`` or ``catalog`` (issue 13's 150 MB budget).
_HOMES: dict[str, str] = {
    "NBIAClient": "tcia_fetch.api.client",
    "ClientSettings": "tcia_fetch.config",
    "RunReport": "tcia_fetch.engine.report",
    "SeriesFailure": "tcia_fetch.engine.report",
    **dict.fromkeys(("RunOptions", "fetch", "plan", "run"), "tcia_fetch.engine.run"),
    **dict.fromkeys(
        (
            "InputError",
            "IntegrityError",
            "MissingDependencyError",
            "SeriesUnavailableError",
            "StorageError",
            "TciaFetchError",
            "TransportError",
        ),
        "tcia_fetch.errors",
    ),
    **dict.fromkeys(("JobSpec", "load_job"), "tcia_fetch.job.jobfile"),
    **dict.fromkeys(
        (
            "DownloadReport",
            "EmptyResultWarning",
            "body_parts",
            "body_parts_async",
            "collections",
            "collections_async",
            "configure",
            "download",
            "download_async",
            "manufacturers",
            "manufacturers_async",
            "modalities",
            "modalities_async",
            "patients",
            "patients_async",
            "series",
            "series_async",
            "series_size",
            "series_size_async",
            "studies",
            "studies_async",
        ),
        "tcia_fetch.notebook",
    ),
}

# ``plan`` and ``series`` are public functions and also subpackages. Python binds a subpackage
# to its parent's attribute when the subpackage is first imported, which would hide the function
# from then on; loading both now and unbinding them leaves the names to ``__getattr__`` for good.
for _subpackage in ("plan", "series"):
    importlib.import_module(f"tcia_fetch.{_subpackage}")
    del globals()[_subpackage]
del _subpackage


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tcia_fetch' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
