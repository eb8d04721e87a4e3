"""A fake NBIA v4 server for tests, benchmarks and the demo (public, documented test kit).

It behaves like the real NBIA REST API, quirks included (reference/nbia-api.md): strict allow-lists,
empty 200 bodies, omitted nulls, ``{}`` value rows, streamed zips without Content-Length, LICENSE and
``md5hashes.csv`` members, database-order file names, exact sizes; plus fault injection and a load model.

::

    catalog = Catalog.generate(seed=7, collections=3)
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=[FaultRule(FaultKind.CUT, times=1)]))
    async with fake.serve() as server:
        server.base_url            # http://127.0.0.1:PORT/nbia-api/services/v4/
        server.stats()             # downloads, 429s, peak concurrency, tokens, faults fired

Catalog rows and files: ``entry.series_row()`` / ``metadata_row()`` / ``size_row()`` are the v4 rows
(nulls omitted); ``entry.instance_files()`` is a ``list[InstanceFile]`` in the server's database order
(the order of ``00000001.dcm...``), each with ``db_name``, ``new_name`` (``NewFileNames=Yes`` name),
``sop_instance_uid``, ``instance_number``, ``acquisition_number``, ``size``, ``read_bytes()`` (made on
demand) and ``md5`` (lower-case hex, cached); ``entry.instances()`` is the same in InstanceNumber order.

Faults: ``FaultPlan(rules=[FaultRule(FaultKind.X, series_uid=None, times=1, **params)], random_rate=0.0,
random_kinds=(...), seed=0)``; see :class:`FaultKind` for each kind's parameters and defaults.
Load: ``LoadModel(bytes_per_s_per_connection, first_byte_delay_s, max_concurrent_downloads,
retry_after_s, query_delay_s)``. Legacy v2: ``server.token_url``; ``fake.stats().token_grants`` /
``token_refreshes`` count successful grants; ``fake.expire_tokens()`` expires every access token.

From synchronous code (a notebook, a script): ``server = serve_in_background(catalog=...)`` serves from a
daemon thread; ``server.base_url``, ``server.stop()`` (or ``with serve_in_background() as server:``).

Command line: ``python -m tcia_fetch.testing serve --port 0 --port-file PATH ...`` (see ``--help``).

Memory and speed: a catalog holds only metadata; each series builds one pydicom header template on first
use; pixel data comes from a byte-bounded LRU (``pixel_cache_bytes``) of a few variants per series,
cached raw and deflated, so a multi-GB series is streamed without ever being held and without
recompression. ``LazyCatalog(count=600_000, seed=..., sizes="range"|"real")`` derives series on demand
(UIDs encode their index; nothing is built up front) for scale tests (``serve --lazy-series N``).
"""

from tcia_fetch.testing._background import BackgroundServer, serve_in_background
from tcia_fetch.testing._catalog import Catalog, InstanceFile, SeriesEntry
from tcia_fetch.testing._faults import FaultKind, FaultPlan, FaultRule
from tcia_fetch.testing._lazy import LazyCatalog
from tcia_fetch.testing._load import LoadModel, ServerStats
from tcia_fetch.testing._server import FakeNBIA, RequestRecord, RunningServer
from tcia_fetch.testing._tls import self_signed_certificate

__all__ = [
    "BackgroundServer",
    "Catalog",
    "FakeNBIA",
    "FaultKind",
    "FaultPlan",
    "FaultRule",
    "InstanceFile",
    "LazyCatalog",
    "LoadModel",
    "RequestRecord",
    "RunningServer",
    "SeriesEntry",
    "ServerStats",
    "self_signed_certificate",
    "serve_in_background",
]
