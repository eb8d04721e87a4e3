"""``catalog.parquet`` and ``instances.parquet``: the destination's holdings as Parquet tables.

Derived from the journal, never a second source of truth: written at the end of each run and
on demand (``tcia-fetch catalog DEST``) from the journal's latest ``done`` records, streamed in
record batches so a 600k-series destination never sits in memory as one table.

``catalog.parquet``: one row per verified series. Every ``getSeriesMetadata`` column (the
server's v4 names, as strings exactly as the journal recorded them; a column the server left out
is null), then tcia-fetch's own columns: ``tcia_path`` (the series' path under the destination
root, which is also its key under the bucket prefix), ``tcia_files`` (the stored file names),
``tcia_instance_count``, ``tcia_dicom_bytes``, ``tcia_stored_bytes`` (what the stored files take),
``tcia_downloaded_at`` (UTC) and ``tcia_sop_class_uid``; metadata keys outside the v4 list go to
``tcia_extra_metadata`` (JSON).

``instances.parquet``: one row per stored file: ``SeriesInstanceUID``, ``file_name``, ``path``,
``size``, ``md5``. For ``keep = "zip"``/``"tar.zst"`` the stored file is the series archive (the
per-instance MD5s are inside a tar.zst's ``MD5SUMS``).

The only module that imports pyarrow (lazily: the CLI does not pay for it). Rows reach Arrow as
newline-delimited JSON read with the tables' explicit schemas (``pyarrow.json``), not through
``RecordBatch.from_pylist``: converting Python objects makes pyarrow import pandas to check for
its types, which doubled the catalog writer's memory (165 MB against 76 MB for 40 series).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tcia_fetch.errors import DestinationError
from tcia_fetch.store.records import SeriesRecord

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "CATALOG_NAME",
    "INSTANCES_NAME",
    "METADATA_COLUMNS",
    "catalog_available",
    "import_pyarrow_lean",
    "write_catalogs",
]

CATALOG_NAME: Final = "catalog.parquet"
INSTANCES_NAME: Final = "instances.parquet"
_BATCH_ROWS: Final = 4096
_BATCH_BYTES: Final = 2 << 20


#: Every ``getSeriesMetadata`` column, in ``SeriesMetadataRow``'s order (its field aliases).
#: Written out rather than read from the model: this module runs in the catalog child, and the
#: model would load pydantic there for a list of names (a test keeps the two equal).
METADATA_COLUMNS: Final = (
    "SeriesInstanceUID", "StudyInstanceUID", "Collection", "PatientID", "Modality", "ProtocolName",
    "SeriesDate", "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Site",
    "PatientSex", "PatientAge", "AdmittingDiagnosisDescription", "Manufacturer",
    "ManufacturerModelName", "SoftwareVersions", "ImageCount", "MaxSubmissionTimestamp",
    "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize", "ReleasedStatus", "DateReleased",
    "StudyDate", "ThirdPartyAnalysis", "Authorized", "StudyDesc", "PatientName", "EthnicGroup",
    "Phantom", "SpeciesCode", "SpeciesDescription", "StudyID", "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent", "PixelSpacing(mm)-Row", "SliceThickness(mm)",
)  # fmt: skip


def catalog_available() -> bool:
    """Whether pyarrow is installed, without importing it (that alone costs ~45 MB of RSS)."""
    return importlib.util.find_spec("pyarrow") is not None


def import_pyarrow_lean() -> None:
    """Import pyarrow without numpy, for a process that only writes the catalog.

    pyarrow imports numpy whenever it is installed (~11 MB of resident memory), yet since
    pyarrow 16 it works without it, and these tables never touch a numpy array. Marking numpy
    unimportable while pyarrow loads keeps it out; an older pyarrow that needs numpy is then
    imported normally. A process that already has either module is left as it is.
    """
    if "numpy" in sys.modules or "pyarrow" in sys.modules:
        return
    sys.modules["numpy"] = None  # type: ignore[assignment]  # import numpy -> ImportError
    try:
        import pyarrow.json
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        for name in [name for name in sys.modules if name.partition(".")[0] == "pyarrow"]:
            del sys.modules[name]
    finally:
        del sys.modules["numpy"]


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.json
        import pyarrow.parquet
    except ImportError as exc:
        raise DestinationError(
            "the Parquet catalog needs the optional dependency pyarrow: pip install 'tcia-fetch[parquet]'"
        ) from exc
    return pyarrow


def _schemas(pa: Any) -> tuple[pyarrow.Schema, pyarrow.Schema]:
    series = pa.schema(
        [
            *(pa.field(name, pa.string()) for name in METADATA_COLUMNS),
            pa.field("tcia_path", pa.string()),
            pa.field("tcia_files", pa.list_(pa.string())),
            pa.field("tcia_instance_count", pa.int64()),
            pa.field("tcia_dicom_bytes", pa.int64()),
            pa.field("tcia_stored_bytes", pa.int64()),
            pa.field("tcia_downloaded_at", pa.timestamp("s", tz="UTC")),
            pa.field("tcia_sop_class_uid", pa.string()),
            pa.field("tcia_extra_metadata", pa.string()),
        ]
    )
    instances = pa.schema(
        [
            pa.field("SeriesInstanceUID", pa.string()),
            pa.field("file_name", pa.string()),
            pa.field("path", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("md5", pa.string()),
        ]
    )
    return series, instances


def _series_row(record: SeriesRecord) -> dict[str, object]:
    metadata = dict(record.metadata or {})
    metadata.setdefault("SeriesInstanceUID", record.series_uid)
    row: dict[str, object] = {
        name: (None if metadata.get(name) is None else str(metadata[name])) for name in METADATA_COLUMNS
    }
    extra = {key: value for key, value in metadata.items() if key not in row}
    row.update(
        tcia_path=record.path,
        tcia_files=[entry.name for entry in record.files],
        tcia_instance_count=record.instance_count,
        tcia_dicom_bytes=record.dicom_bytes,
        tcia_stored_bytes=record.total_file_bytes,
        tcia_downloaded_at=dt.datetime.fromtimestamp(int(record.at), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tcia_sop_class_uid=record.sop_class_uid,
        tcia_extra_metadata=json.dumps(extra, sort_keys=True) if extra else None,
    )
    return row


def _instance_rows(record: SeriesRecord) -> Iterator[dict[str, object]]:
    for entry in record.files:
        yield {
            "SeriesInstanceUID": record.series_uid,
            "file_name": entry.name,
            "path": f"{record.path}/{entry.name}" if record.path else entry.name,
            "size": entry.size,
            "md5": entry.md5,
        }


def _pool() -> Any:
    """The C allocator's pool: Arrow's default (mimalloc) keeps ~20 MB more resident for these
    small batches (measured: 135 MB against 112 MB for the whole ``tcia-fetch catalog``)."""
    import pyarrow

    return pyarrow.system_memory_pool()


class _TableSink:
    """One Parquet table being written: rows are kept as JSON lines (a fraction of what the row
    dicts take) and handed to Arrow as one batch when ``_BATCH_ROWS`` rows or ``_BATCH_BYTES``
    of text are waiting, whichever comes first, so memory is bounded however wide the rows are."""

    def __init__(self, out: Any, schema: pyarrow.Schema) -> None:
        self._out = out
        self._schema = schema
        self._lines: list[str] = []
        self._bytes = 0

    def add(self, row: dict[str, object]) -> None:
        line = json.dumps(row, separators=(",", ":"))
        self._lines.append(line)
        self._bytes += len(line)
        if len(self._lines) >= _BATCH_ROWS or self._bytes >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Append the waiting rows to the file as one row group (nothing when none wait)."""
        if not self._lines:
            return
        import pyarrow.json as pj

        text = "\n".join(self._lines).encode()
        self._lines.clear()
        self._bytes = 0
        options = pj.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="error")
        # One thread: Arrow's pool threads each leave a malloc arena behind (~5 MB resident).
        reading = pj.ReadOptions(use_threads=False)
        table = pj.read_json(
            io.BytesIO(text), read_options=reading, parse_options=options, memory_pool=_pool()
        )
        del text
        self._out.write_table(table)


def write_catalogs(records: Iterable[SeriesRecord], directory: Path) -> tuple[Path, Path]:
    """Write both tables into ``directory`` (each atomically: temporary file, then rename).

    ``records`` may be any iterable of journal records (only ``done`` ones are written), read
    once, in order; rows go out in batches of a few thousand.
    """
    pa = _pyarrow()
    import pyarrow.parquet as pq

    series_schema, instance_schema = _schemas(pa)
    catalog_path = directory / CATALOG_NAME
    instances_path = directory / INSTANCES_NAME
    # Named like store.atomic's temporaries, so startup cleanup removes those of killed writers.
    catalog_tmp = directory / f".{CATALOG_NAME}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    instances_tmp = directory / f".{INSTANCES_NAME}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        options: dict[str, Any] = {"compression": "zstd", "memory_pool": _pool()}
        with (
            pq.ParquetWriter(catalog_tmp, series_schema, **options) as series_out,
            pq.ParquetWriter(instances_tmp, instance_schema, **options) as instances_out,
        ):
            series_sink = _TableSink(series_out, series_schema)
            instance_sink = _TableSink(instances_out, instance_schema)
            for record in records:
                if record.status != "done":
                    continue
                series_sink.add(_series_row(record))
                for row in _instance_rows(record):
                    instance_sink.add(row)
            series_sink.flush()
            instance_sink.flush()
        os.replace(catalog_tmp, catalog_path)
        os.replace(instances_tmp, instances_path)
    except OSError as exc:
        raise DestinationError(
            f"cannot write the Parquet catalog in {directory}: {exc.strerror or exc}"
        ) from exc
    finally:
        for leftover in (catalog_tmp, instances_tmp):
            leftover.unlink(missing_ok=True)
    return catalog_path, instances_path
