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

Written by ``store/_parquet.py`` (pure Python and zstandard), in the run's own process: no
pyarrow, whose import alone costs about 45 MB of resident memory (see that module). Reading the
tables is the user's business: DuckDB, pandas or pyarrow.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tcia_fetch._version import __version__
from tcia_fetch.store._parquet import Column, ColumnKind, ParquetWriter
from tcia_fetch.store.atomic import open_atomic_sync
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.records import SeriesRecord

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = [
    "CATALOG_NAME",
    "INSTANCES_NAME",
    "METADATA_COLUMNS",
    "write_catalogs",
    "write_destination_catalogs",
]

CATALOG_NAME: Final = "catalog.parquet"
INSTANCES_NAME: Final = "instances.parquet"


#: Every ``getSeriesMetadata`` column, in ``SeriesMetadataRow``'s order (its field aliases).
#: Written out rather than read from the model, which this module has no other reason to import
#: (a test keeps the two equal).
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


_SERIES_COLUMNS: Final = (
    *(Column(name, ColumnKind.STRING) for name in METADATA_COLUMNS),
    Column("tcia_path", ColumnKind.STRING),
    Column("tcia_files", ColumnKind.STRING_LIST),
    Column("tcia_instance_count", ColumnKind.INT64),
    Column("tcia_dicom_bytes", ColumnKind.INT64),
    Column("tcia_stored_bytes", ColumnKind.INT64),
    Column("tcia_downloaded_at", ColumnKind.TIMESTAMP_MS_UTC),
    Column("tcia_sop_class_uid", ColumnKind.STRING),
    Column("tcia_extra_metadata", ColumnKind.STRING),
)
_INSTANCE_COLUMNS: Final = (
    Column("SeriesInstanceUID", ColumnKind.STRING),
    Column("file_name", ColumnKind.STRING),
    Column("path", ColumnKind.STRING),
    Column("size", ColumnKind.INT64),
    Column("md5", ColumnKind.STRING),
)
_CREATED_BY: Final = f"tcia-fetch version {__version__}"
_METADATA_NAMES: Final = frozenset(METADATA_COLUMNS)


def _series_row(record: SeriesRecord) -> tuple[object, ...]:
    metadata = dict(record.metadata or {})
    metadata.setdefault("SeriesInstanceUID", record.series_uid)
    known = [None if metadata.get(name) is None else str(metadata[name]) for name in METADATA_COLUMNS]
    extra = {key: value for key, value in metadata.items() if key not in _METADATA_NAMES}
    return (
        *known,
        record.path,
        [entry.name for entry in record.files],
        record.instance_count,
        record.dicom_bytes,
        record.total_file_bytes,
        int(record.at) * 1000,  # whole seconds, as the journal's clock is reported everywhere else
        record.sop_class_uid,
        json.dumps(extra, sort_keys=True) if extra else None,
    )


def _instance_rows(record: SeriesRecord) -> Iterator[tuple[object, ...]]:
    for entry in record.files:
        path = f"{record.path}/{entry.name}" if record.path else entry.name
        yield record.series_uid, entry.name, path, entry.size, entry.md5


def write_catalogs(records: Iterable[SeriesRecord], directory: Path) -> tuple[Path, Path]:
    """Write both tables into ``directory``, each atomically (``store.atomic``: temporary file,
    fsync, rename), in one pass over ``records``.

    ``records`` may be any iterable of journal records (only ``done`` ones are written), read
    once, in order; rows go out in row groups of a few thousand.
    """
    catalog_path = directory / CATALOG_NAME
    instances_path = directory / INSTANCES_NAME
    action = "write the Parquet catalog in"
    with (
        open_atomic_sync(catalog_path, mode=0o644, action=action) as series_file,
        open_atomic_sync(instances_path, mode=0o644, action=action) as instances_file,
    ):
        # row groups of at most 4,096 rows or 2 MiB of encoded values (the writer's defaults)
        series = ParquetWriter(series_file, _SERIES_COLUMNS, created_by=_CREATED_BY)
        instances = ParquetWriter(instances_file, _INSTANCE_COLUMNS, created_by=_CREATED_BY)
        for record in records:
            if record.status != "done":
                continue
            series.append(_series_row(record))
            for row in _instance_rows(record):
                instances.append(row)
        series.close()
        instances.close()
    return catalog_path, instances_path


def write_destination_catalogs(
    records: Iterable[SeriesRecord], destination: Destination | BucketDestination
) -> list[str]:
    """Write both tables where ``destination`` keeps them; returns where they went.

    A directory gets them in its root. A bucket gets them under its prefix: written to a local
    scratch directory first, then each uploaded whole (an object appears complete or not at all).
    Synchronous: call from a thread (a bucket's store runs its requests on its own loop).
    """
    if isinstance(destination, Destination):
        return [str(path) for path in write_catalogs(records, destination.root)]
    scratch = Path(tempfile.mkdtemp(prefix="tcia-fetch-catalog-"))
    try:
        write_catalogs(records, scratch)
        where = []
        for name in (CATALOG_NAME, INSTANCES_NAME):
            key = destination.location.key(name)
            destination.store.upload_file(key, scratch / name)
            where.append(f"s3://{destination.store.bucket}/{key}")
        return where
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
