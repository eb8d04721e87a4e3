"""What the journal stores: one :class:`SeriesRecord` per state change of one series.

Pure data and its JSON form, no I/O, so the state machine can be tested without a filesystem.
A record is one JSON object on one line; ``from_json`` validates every field and raises
``ValueError`` naming the field, which the journal turns into a JournalError with file and line.

Statuses:

* ``verified`` - the series passed every check in staging and is about to be published
  (a crash after this record and before ``done`` is resolved by startup reconciliation);
* ``done`` - published under ``path`` (relative to the destination root) and durable;
* ``failed`` - given up on in this run (``reason``, ``reference``, ``attempts`` say why).
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, get_args

__all__ = [
    "RECORD_FORMAT_VERSION",
    "FileEntry",
    "SeriesRecord",
    "SeriesStatus",
    "VerifiedFileLike",
    "VerifiedSeriesLike",
    "json_safe_metadata",
]

RECORD_FORMAT_VERSION = 1
SeriesStatus = Literal["verified", "done", "failed"]
_STATUSES: frozenset[str] = frozenset(get_args(SeriesStatus))
_DECODER = json.JSONDecoder()


class VerifiedFileLike(Protocol):
    """Anything shaped like the extractor's ``VerifiedFile`` (name, size, md5)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def md5(self) -> str | None: ...


class VerifiedSeriesLike(Protocol):
    """Anything shaped like the extractor's ``VerifiedSeries``."""

    @property
    def series_uid(self) -> str: ...
    @property
    def instance_count(self) -> int: ...
    @property
    def dicom_bytes(self) -> int: ...
    @property
    def sop_class_uid(self) -> str | None: ...
    @property
    def files(self) -> Iterable[VerifiedFileLike]: ...


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One published file: its name inside the series directory, its size in bytes, its MD5 (hex)."""

    name: str
    size: int
    md5: str | None = None

    @classmethod
    def from_verified(cls, verified_file: VerifiedFileLike) -> FileEntry:
        return cls(name=verified_file.name, size=verified_file.size, md5=verified_file.md5)


def json_safe_metadata(row: Mapping[str, object]) -> dict[str, object]:
    """A copy of a server metadata row that ``json.dumps`` accepts and that round-trips.

    Dates and datetimes become ISO strings, Decimals become strings, non-finite floats become
    None, nested mappings and sequences are converted recursively; anything else becomes ``str``.
    """
    return {str(key): _json_safe(value) for key, value in row.items()}


def _json_safe(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return str(value)


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """One state change of one series. Immutable; the latest record per series wins."""

    series_uid: str
    status: SeriesStatus
    at: float
    run_id: str
    path: str | None = None
    files: tuple[FileEntry, ...] = ()
    instance_count: int | None = None
    dicom_bytes: int | None = None
    sop_class_uid: str | None = None
    reason: str | None = None
    reference: str | None = None
    attempts: int | None = None
    metadata: dict[str, object] | None = field(default=None, compare=True, hash=False)

    @classmethod
    def from_verified(
        cls,
        verified: VerifiedSeriesLike,
        *,
        status: Literal["verified", "done"],
        run_id: str,
        path: str,
        metadata: Mapping[str, object] | None = None,
        attempts: int | None = None,
        at: float | None = None,
    ) -> SeriesRecord:
        """Build a ``verified`` or ``done`` record from the extractor's result (plain values only)."""
        return cls(
            series_uid=verified.series_uid,
            status=status,
            at=time.time() if at is None else at,
            run_id=run_id,
            path=path,
            files=tuple(FileEntry.from_verified(item) for item in verified.files),
            instance_count=verified.instance_count,
            dicom_bytes=verified.dicom_bytes,
            sop_class_uid=verified.sop_class_uid,
            attempts=attempts,
            metadata=json_safe_metadata(metadata) if metadata is not None else None,
        )

    def with_status(self, status: SeriesStatus, *, run_id: str, at: float | None = None) -> SeriesRecord:
        """The same facts under a new status (used to turn ``verified`` into ``done``)."""
        return SeriesRecord(
            series_uid=self.series_uid,
            status=status,
            at=time.time() if at is None else at,
            run_id=run_id,
            path=self.path,
            files=self.files,
            instance_count=self.instance_count,
            dicom_bytes=self.dicom_bytes,
            sop_class_uid=self.sop_class_uid,
            reason=self.reason,
            reference=self.reference,
            attempts=self.attempts,
            metadata=self.metadata,
        )

    @property
    def total_file_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> str:
        """One line of JSON (no newline). Files are ``[name, size, md5]`` triples to stay compact."""
        document: dict[str, object] = {
            "v": RECORD_FORMAT_VERSION,
            "uid": self.series_uid,
            "status": self.status,
            "at": self.at,
            "run": self.run_id,
        }
        optional: dict[str, object | None] = {
            "path": self.path,
            "instances": self.instance_count,
            "dicom_bytes": self.dicom_bytes,
            "sop_class": self.sop_class_uid,
            "reason": self.reason,
            "reference": self.reference,
            "attempts": self.attempts,
            "metadata": self.metadata,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        if self.files:
            document["files"] = [[entry.name, entry.size, entry.md5] for entry in self.files]
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> SeriesRecord:
        """Parse and validate one line; ``ValueError`` (naming the problem) when it is not a record."""
        try:
            document = _DECODER.decode(line if isinstance(line, str) else line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        version = document.get("v")
        if version != RECORD_FORMAT_VERSION:
            raise ValueError(
                f"unsupported record version {version!r} (this tcia-fetch writes {RECORD_FORMAT_VERSION})"
            )
        status = _require(document, "status", str)
        if status not in _STATUSES:
            raise ValueError(f"unknown status {status!r}")
        at = document.get("at")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise ValueError("field 'at' must be a number")
        metadata = document.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("field 'metadata' must be an object")
        return cls(
            series_uid=_require(document, "uid", str),
            status=cast(SeriesStatus, status),
            at=float(at),
            run_id=_require(document, "run", str),
            path=_optional(document, "path", str),
            files=_parse_files(document.get("files", [])),
            instance_count=_optional_int(document, "instances"),
            dicom_bytes=_optional_int(document, "dicom_bytes"),
            sop_class_uid=_optional(document, "sop_class", str),
            reason=_optional(document, "reason", str),
            reference=_optional(document, "reference", str),
            attempts=_optional_int(document, "attempts"),
            metadata=cast("dict[str, object] | None", metadata),
        )


def _require(document: dict[str, Any], key: str, kind: type[str]) -> str:
    value = document.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be a {kind.__name__}")
    return value


def _optional(document: dict[str, Any], key: str, kind: type[str]) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be a {kind.__name__} or absent")
    return value


def _optional_int(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"field {key!r} must be a non-negative integer or absent")
    return value


def _parse_files(raw: object) -> tuple[FileEntry, ...]:
    if not isinstance(raw, list):
        raise ValueError("field 'files' must be a list")
    entries = []
    for item in raw:
        # Exact type checks: fast on 10^5-record journals, and bool is not an acceptable size.
        if (
            type(item) is not list
            or len(item) != 3
            or type(item[0]) is not str
            or type(item[1]) is not int
            or item[1] < 0
            or not (item[2] is None or type(item[2]) is str)
        ):
            raise ValueError(f"bad file entry {item!r}: expected [name, size, md5]")
        entries.append(FileEntry(item[0], item[1], item[2]))
    return tuple(entries)
