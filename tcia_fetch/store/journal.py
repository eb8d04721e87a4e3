"""The crash-safe run journal: what is done, verified or failed, in bounded memory, without locks.

Layout of the state area (``<root>/.tcia-fetch/`` or an object-store prefix, via :mod:`statestore`)::

    snapshot.jsonl.zst      compacted state: header, one latest record per series, compact index
    journal/<ns>-<host>-<pid>-<nonce>.jsonl     one append-only segment (log) per writer
    writers/<segment name>  present while the segment's writer may still append to it
    compact.lease           held by the one process compacting right now

Why this design (reliability §0.5, §4.7): SQLite WAL does not work on NFS/Lustre or S3, and
``flock`` may silently succeed for everyone on NFS. Here no two processes ever write the same
log: each writer appends to its own segment, one JSON line per state change, each append made
durable before it returns. Readers merge the snapshot and then every segment in name order (the
name starts with the writer's start time in ns, so name order is time order); the latest record
per series wins.

Bounded memory (issue 13: 600,000-series jobs under 150 MB): the merged view is never held as
Python objects. The snapshot ends with a binary index, sorted by the 64-bit digest of each UID
(:mod:`digests`): digest, status code, DICOM bytes and file bytes, 25 bytes per series, loaded
with ``array.frombytes``. Records from segments not yet compacted live in a small dict keyed by
digest (the "overlay"); its size is bounded because a writer compacts every ``compact_every``
records. Full records (metadata, file lists) are read only by streaming: :meth:`iter_latest`
yields the latest record of every series one at a time (snapshot records not overridden by the
overlay, then the overlay's records from their segments).

Compaction streams the old snapshot and the folded segments into a new snapshot (written through
``StateStorage.write_from``: nothing is assembled in memory) and then deletes the folded segments.
Its cost is linear in the destination's size; a full rewrite of a 600,000-series snapshot takes a
few seconds (measured in benchmarks/scale), so it is done every ``compact_every`` records and at
the end of a run, rather than with a leveled scheme. Several processes may write one destination
(``--shard``): a compaction runs only under the exclusive ``compact.lease`` (a holder that died on
this host, or a lease older than an hour, is treated as abandoned), checks that the snapshot did
not change under it before replacing it, and folds only segments whose writers have finished
(no ``writers/`` registration, or a registration of a dead process on this host): a live
writer's segment is merged by readers but never deleted by someone else.

What a caller may rely on:

* after ``append`` returns, the record survives a crash or power loss of this host;
* a crash mid-append leaves at most a torn last line, which ``open`` ignores;
* damage anywhere else (garbage mid-segment, an unreadable snapshot) raises :class:`JournalError`
  naming the file and line: history is never dropped silently;
* ``append`` is thread-safe (the engine calls it from worker threads).

This is the only module that imports zstandard.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import threading
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import zstandard

from tcia_fetch.errors import DiskFullError, JournalError
from tcia_fetch.store._fs import host_name, pid_is_alive
from tcia_fetch.store.digests import SortedDigests, sorted_unique, uid_digest
from tcia_fetch.store.records import FileEntry, SeriesRecord, SeriesStatus
from tcia_fetch.store.statestore import LocalStateStorage, StateStorage

__all__ = [
    "DAMAGED_ON_DISK",
    "LEASE_NAME",
    "SEGMENT_DIR",
    "SNAPSHOT_NAME",
    "FileEntry",
    "Journal",
    "JournalCounts",
    "JournalStatistics",
    "Kind",
    "SeriesRecord",
]

SNAPSHOT_NAME: Final = "snapshot.jsonl.zst"
SEGMENT_DIR: Final = "journal"
WRITERS_DIR: Final = "writers"
LEASE_NAME: Final = "compact.lease"
#: The reference of a ``failed`` record written by ``tcia-fetch verify`` for a published series
#: whose files no longer match: the next run fetches it again and swaps it in with ``replace``.
DAMAGED_ON_DISK: Final = "damaged-on-disk"

_SEGMENT_SUFFIX: Final = ".jsonl"
_SNAPSHOT_FORMAT: Final = 2
_READABLE_FORMATS: Final = (1, 2)
_ZSTD_LEVEL: Final = 3
_OPEN_ATTEMPTS: Final = 20
_CHUNK_BYTES: Final = 1 << 20
#: Records folded per compaction: bounds the overlay (~250 bytes per record) and crash recovery.
DEFAULT_COMPACT_EVERY: Final = 20_000
#: Lines per segment before the writer starts a new one: ``read_log`` returns a whole log, so
#: this bounds what a reader holds at once (~3 MB of records; 10,000 lines cost ~35 MB at 10^4).
_ROTATE_LINES: Final = 2_000
_LEASE_STALE_S: Final = 3600.0
_LEASE_POLL_S: Final = 0.2
_INDEX_ENTRY_BYTES: Final = 25

Kind = Literal["verified", "done", "failed", "damaged"]
_VERIFIED, _DONE, _FAILED, _DAMAGED = 0, 1, 2, 3
_CODE_OF_KIND: Final[dict[str, int]] = {
    "verified": _VERIFIED,
    "done": _DONE,
    "failed": _FAILED,
    "damaged": _DAMAGED,
}
_STATUS_OF_CODE: Final[tuple[SeriesStatus, ...]] = ("verified", "done", "failed", "failed")
_UID_PREFIX: Final = b'{"v":1,"uid":"'


def _code(record: SeriesRecord) -> int:
    if record.status == "failed":
        return _DAMAGED if record.reference == DAMAGED_ON_DISK else _FAILED
    return _DONE if record.status == "done" else _VERIFIED


# An overlay entry: (code, dicom bytes, file bytes, segment number, line number in the segment).
_Entry = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """What ``open`` found: useful for the status command and for tests."""

    snapshot_records: int
    segments_read: int
    segment_records: int
    torn_lines_ignored: int


@dataclass(frozen=True, slots=True)
class JournalCounts:
    """Series per latest status (``failed`` includes ``damaged``), and bytes of the done ones."""

    verified: int
    done: int
    failed: int
    damaged: int
    done_bytes: int
    done_file_bytes: int


class _SnapshotReplacedError(JournalError):
    """The snapshot was replaced by another process's compaction while a view was being read."""


class _Index:
    """The snapshot's view: parallel arrays sorted by UID digest (25 bytes per series)."""

    __slots__ = ("codes", "dicom", "digests", "file_bytes")

    def __init__(
        self, digests: array[int], codes: array[int], dicom: array[int], file_bytes: array[int]
    ) -> None:
        self.digests = digests
        self.codes = codes
        self.dicom = dicom
        self.file_bytes = file_bytes

    @classmethod
    def empty(cls) -> _Index:
        return cls(array("Q"), array("B"), array("Q"), array("Q"))

    def __len__(self) -> int:
        return len(self.digests)

    def find(self, digest: int) -> int:
        """Position of ``digest``, or -1."""
        index = bisect_left(self.digests, digest)
        return index if index < len(self.digests) and self.digests[index] == digest else -1

    def columns(self) -> tuple[array[int], ...]:
        """The four columns in their on-disk order (digests, codes, DICOM bytes, file bytes)."""
        return (self.digests, self.codes, self.dicom, self.file_bytes)

    @classmethod
    def read(cls, read_exact: Callable[[int], bytes], count: int) -> _Index:
        """The index from its four column blocks, read straight into the arrays a chunk at a time.

        ``read_exact(size)`` returns the next ``size`` bytes (at most), or fewer at the end of
        the data. No block of a column is ever held beside the column (at 600,000 series the
        digests alone are 4.8 MB).
        """
        parts = []
        for typecode, width in (("Q", 8), ("B", 1), ("Q", 8), ("Q", 8)):
            part = array(typecode)
            wanted = count * width
            while len(part) * width < wanted:
                block = read_exact(min(_CHUNK_BYTES, wanted - len(part) * width))
                if not block or len(block) % width:
                    held = len(part) * width + len(block)
                    raise ValueError(f"index is truncated: a column holds {held} bytes of {wanted}")
                part.frombytes(block)
            parts.append(part)
        index = cls(*parts)
        digests = index.digests
        if any(digests[n] >= digests[n + 1] for n in range(len(digests) - 1)):
            raise ValueError("index is not sorted")
        if any(code > _DAMAGED for code in index.codes):
            raise ValueError("index holds an unknown status code")
        return index

    @classmethod
    def build(cls, entries: Iterable[tuple[int, int, int, int]]) -> _Index:
        """From unsorted (digest, code, dicom, file bytes); a later duplicate digest wins."""
        latest: dict[int, tuple[int, int, int]] = {}
        for digest, code, dicom, file_bytes in entries:
            latest[digest] = (code, dicom, file_bytes)
        index = cls.empty()
        for digest in sorted(latest):
            code, dicom, file_bytes = latest[digest]
            index.digests.append(digest)
            index.codes.append(code)
            index.dicom.append(dicom)
            index.file_bytes.append(file_bytes)
        return index

    def merged(self, newer: dict[int, _Entry]) -> _Index:
        """This index with ``newer`` entries replacing or joining: one O(n) copy + O(k log n).

        Exactly one copy of the arrays is made (the old index stays in use until the new
        snapshot is written): at 600,000 series each copy is 15 MB.
        """
        inserts = sorted(digest for digest in newer if self.find(digest) < 0)
        if not inserts:
            result = _Index(
                array("Q", self.digests),
                array("B", self.codes),
                array("Q", self.dicom),
                array("Q", self.file_bytes),
            )
        else:
            result = _Index.empty()
            start = 0
            for digest in inserts:
                cut = bisect_left(self.digests, digest, start)
                result.digests.extend(self.digests[start:cut])
                result.codes.extend(self.codes[start:cut])
                result.dicom.extend(self.dicom[start:cut])
                result.file_bytes.extend(self.file_bytes[start:cut])
                result.digests.append(digest)
                result.codes.append(0)
                result.dicom.append(0)
                result.file_bytes.append(0)
                start = cut
            result.digests.extend(self.digests[start:])
            result.codes.extend(self.codes[start:])
            result.dicom.extend(self.dicom[start:])
            result.file_bytes.extend(self.file_bytes[start:])
        for digest, entry in newer.items():
            position = result.find(digest)
            result.codes[position], result.dicom[position], result.file_bytes[position] = (
                entry[0],
                entry[1],
                entry[2],
            )
        return result


def _fast_uid(line: bytes) -> str:
    """The UID of a record line: read from our own fixed prefix, else by parsing the JSON."""
    if line.startswith(_UID_PREFIX):
        end = line.find(b'"', len(_UID_PREFIX))
        if end > 0:
            raw = line[len(_UID_PREFIX) : end]
            if b"\\" not in raw:
                return raw.decode("utf-8")
    return SeriesRecord.from_json(line).series_uid


class Journal:
    """The merged view of every journal file plus this writer's own segment. Build with :meth:`open`."""

    def __init__(
        self, storage: StateStorage, *, run_id: str, compact_every: int = DEFAULT_COMPACT_EVERY
    ) -> None:
        self._storage = storage
        self._run_id = run_id
        self._compact_every = max(1, compact_every)
        self._index = _Index.empty()
        self._overlay: dict[int, _Entry] = {}
        self._snapshot_version: str | None = None
        self._snapshot_format = _SNAPSHOT_FORMAT
        #: Segment names by number (None once folded); overlay entries refer to these numbers.
        self._segments: list[str | None] = []
        self._foldable: set[int] = set()
        self._own_segment: int | None = None
        self._own_lines = 0
        self._next_compaction = self._compact_every
        self._mutex = threading.RLock()
        self.statistics = JournalStatistics(0, 0, 0, 0)
        #: Records this object has appended (0 on a rerun that found nothing to do).
        self.appended = 0

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        storage: StateStorage | Path,
        *,
        run_id: str,
        compact_every: int = DEFAULT_COMPACT_EVERY,
    ) -> Journal:
        """Read the snapshot's index and every segment, merge them, and get ready to append.

        ``storage`` may be a state directory (a :class:`LocalStateStorage` is made for it). A
        reader that does not hold the lease (``status``, ``verify``) may race with a compaction;
        when the snapshot changes while reading, the read starts over, so the view is never a
        mix of two generations.
        """
        if not isinstance(storage, StateStorage):
            storage = LocalStateStorage(Path(storage))
        for attempt in range(_OPEN_ATTEMPTS):
            journal = cls(storage, run_id=run_id, compact_every=compact_every)
            if journal._read_all():
                return journal
            time.sleep(min(0.5, 0.01 * (attempt + 1)))
        raise JournalError(
            f"{storage.describe('')}: the journal kept changing while being read (compaction loop?)"
        )

    def _read_all(self) -> bool:
        """Load the snapshot index and every segment; False when a compaction was detected."""
        self._snapshot_version = self._storage.version(SNAPSHOT_NAME)
        active = self._active_writers()
        snapshot_records = self._load_snapshot_index()
        segment_records = 0
        torn = 0
        names = [name for name in self._storage.list_logs(SEGMENT_DIR) if name.endswith(_SEGMENT_SUFFIX)]
        for name in names:
            number = len(self._segments)
            self._segments.append(name)
            if name.rsplit("/", 1)[-1] not in active:
                self._foldable.add(number)
            for line_number, record, _ in self._parse_segment(name):
                self._overlay[uid_digest(record.series_uid)] = (
                    _code(record),
                    record.dicom_bytes or 0,
                    record.total_file_bytes,
                    number,
                    line_number,
                )
                segment_records += 1
            torn += self._last_torn
        if self._storage.version(SNAPSHOT_NAME) != self._snapshot_version:
            return False
        self.statistics = JournalStatistics(snapshot_records, len(names), segment_records, torn)
        return True

    def _active_writers(self) -> set[str]:
        """Segment names whose writer may still append (registered and not provably dead)."""
        active = set()
        for name in self._storage.list(WRITERS_DIR):
            base = name.rsplit("/", 1)[-1]
            data = self._storage.read(name)
            try:
                owner = json.loads(data) if data else {}
                dead = owner["host"] == host_name() and not pid_is_alive(int(owner["pid"]))
            except (ValueError, KeyError, TypeError):
                dead = False  # being written right now, or unreadable: assume alive (never lose)
            if not dead:
                active.add(base)
        return active

    # -- the snapshot ---------------------------------------------------------------------------

    def _open_snapshot(self) -> tuple[io.BufferedReader[Any], dict[str, Any]] | None:
        """The decompressed snapshot positioned after its header, and the header; None if absent."""
        raw = self._storage.read_stream(SNAPSHOT_NAME)
        if raw is None:
            return None
        try:
            reader = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK_BYTES, closefd=True),
                buffer_size=_CHUNK_BYTES,
            )
            first = reader.readline()
        except zstandard.ZstdError as exc:
            raw.close()
            raise self._damaged_snapshot(exc) from exc
        where = self._storage.describe(SNAPSHOT_NAME)
        if not first.endswith(b"\n"):
            reader.close()
            raise JournalError(f"{where}:1: the journal snapshot has no header line")
        try:
            header = json.loads(first)
            int(header["records"])
            if header.get("snapshot") not in _READABLE_FORMATS:
                raise ValueError(f"unsupported snapshot format {header.get('snapshot')!r}")
        except (ValueError, KeyError, TypeError) as exc:
            reader.close()
            raise JournalError(f"{where}:1: bad snapshot header: {exc}") from exc
        return reader, header

    def _damaged_snapshot(self, exc: Exception) -> JournalError:
        return JournalError(
            f"{self._storage.describe(SNAPSHOT_NAME)}: the journal snapshot is damaged ({exc}); restore it "
            "from a backup: tcia-fetch will not guess which series are complete"
        )

    def _snapshot_lines(self, reader: io.BufferedReader[Any], declared: int) -> Iterator[bytes]:
        """Exactly ``declared`` record lines (without newline), or JournalError."""
        where = self._storage.describe(SNAPSHOT_NAME)
        seen = 0
        try:
            while seen < declared:
                line = reader.readline()
                if not line.endswith(b"\n"):
                    raise JournalError(
                        f"{where}: the snapshot declares {declared} records but holds {seen} (truncated?)"
                    )
                seen += 1
                yield line[:-1]
        except zstandard.ZstdError as exc:
            raise self._damaged_snapshot(exc) from exc

    def _skip_lines(self, reader: io.BufferedReader[Any], count: int) -> bytes:
        """Read past ``count`` lines (counting newlines chunk by chunk); the bytes read beyond them."""
        remaining = count
        while remaining:
            chunk = reader.read(_CHUNK_BYTES)
            if not chunk:
                raise JournalError(
                    f"{self._storage.describe(SNAPSHOT_NAME)}: the snapshot declares {count} records but "
                    f"holds {count - remaining} (truncated?)"
                )
            found = chunk.count(b"\n")
            if found < remaining:
                remaining -= found
                continue
            position = -1
            for _ in range(remaining):
                position = chunk.index(b"\n", position + 1)
            return chunk[position + 1 :]
        return b""

    def _load_snapshot_index(self) -> int:
        opened = self._open_snapshot()
        if opened is None:
            return 0
        reader, header = opened
        declared = int(str(header["records"]))
        where = self._storage.describe(SNAPSHOT_NAME)
        with reader:
            self._snapshot_format = int(str(header["snapshot"]))
            if self._snapshot_format == 1:
                entries = []
                for number, line in enumerate(self._snapshot_lines(reader, declared), start=2):
                    try:
                        record = SeriesRecord.from_json(line)
                    except ValueError as exc:
                        raise JournalError(f"{where}:{number}: bad snapshot record: {exc}") from exc
                    entries.append(
                        (
                            uid_digest(record.series_uid),
                            _code(record),
                            record.dicom_bytes or 0,
                            record.total_file_bytes,
                        )
                    )
                self._index = _Index.build(entries)
                tail = reader.read(1)
            else:
                # The records are read by iter_latest; here only their count is checked, in C.
                try:
                    leftover = [self._skip_lines(reader, declared)]

                    def read_exact(size: int) -> bytes:
                        head = leftover.pop()
                        if len(head) >= size:
                            leftover.append(head[size:])
                            return head[:size]
                        leftover.append(b"")
                        return head + reader.read(size - len(head)) if head else reader.read(size)

                    try:
                        self._index = _Index.read(read_exact, declared)
                    except ValueError as exc:
                        raise JournalError(f"{where}: bad snapshot index: {exc}") from exc
                    tail = leftover.pop() or reader.read(1)
                except zstandard.ZstdError as exc:
                    raise self._damaged_snapshot(exc) from exc
            if tail:
                raise JournalError(f"{where}: unexpected data after the snapshot's {declared} records")
        return declared

    # -- segments -------------------------------------------------------------------------------

    _last_torn = 0

    def _parse_segment(self, name: str) -> Iterator[tuple[int, SeriesRecord, bytes]]:
        """(line number, record, raw line) of every record of a segment; a torn tail is skipped."""
        lines = self._read_segment(name)
        self._last_torn = 0
        last = len(lines) - 1
        for index, line in enumerate(lines):
            try:
                record = SeriesRecord.from_json(line)
            except ValueError as exc:
                if index == last:
                    self._last_torn = 1
                    continue
                raise JournalError(
                    f"{self._storage.describe(name)}:{index + 1}: damaged journal line ({exc}) followed by "
                    "valid records; refusing to guess what was lost"
                ) from exc
            yield index, record, line

    def _read_segment(self, name: str) -> list[bytes]:
        lines = self._storage.read_log(name).split(b"\n")
        # A crash can leave a tail without newline, or (delayed allocation) a tail of NUL bytes.
        while lines and lines[-1].strip(b"\x00") == b"":
            lines.pop()
        return lines

    def _segment_lines(self, name: str) -> Iterator[tuple[int, str, bytes]]:
        """(line number, UID, raw line) of a segment this view already parsed (compaction's second look).

        The records were validated when the view read them (or written by this writer); the
        UID is read from the line's fixed prefix. A torn last line is skipped as on reading.
        """
        lines = self._read_segment(name)
        last = len(lines) - 1
        for index, line in enumerate(lines):
            try:
                uid = _fast_uid(line)
            except ValueError as exc:
                if index == last:
                    continue
                raise JournalError(
                    f"{self._storage.describe(name)}:{index + 1}: damaged journal line ({exc}) followed by "
                    "valid records; refusing to guess what was lost"
                ) from exc
            yield index, uid, line

    # --- the merged view ---------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def storage(self) -> StateStorage:
        return self._storage

    @property
    def state_dir(self) -> Path:
        """The local state directory (only for a :class:`LocalStateStorage`)."""
        if isinstance(self._storage, LocalStateStorage):
            return self._storage.state_dir
        raise JournalError(f"{self._storage.describe('')} is not a local directory")

    def _code_of(self, digest: int) -> int | None:
        entry = self._overlay.get(digest)
        if entry is not None:
            return entry[0]
        position = self._index.find(digest)
        return self._index.codes[position] if position >= 0 else None

    def status_of(self, series_uid: str) -> SeriesStatus | None:
        """The latest status of one series (None if the journal does not know it). O(log n)."""
        code = self._code_of(uid_digest(series_uid))
        return None if code is None else _STATUS_OF_CODE[code]

    def is_damaged(self, series_uid: str) -> bool:
        """Whether the latest record is ``verify``'s "damaged on disk" failure."""
        return self._code_of(uid_digest(series_uid)) == _DAMAGED

    def digests(self, *kinds: Kind) -> SortedDigests:
        """The UID digests whose latest status is one of ``kinds``, as of now (8 bytes each).

        ``failed`` includes ``damaged`` (verify's failures). A static copy: the planner's skip
        set (done), ``--retry-failed`` (failed) and repairs (damaged) must not change under a
        run that appends new records for those very series.
        """
        codes = {_CODE_OF_KIND[kind] for kind in kinds}
        if _FAILED in codes:
            codes.add(_DAMAGED)
        with self._mutex:
            index, overlay = self._index, self._overlay
            values = array(
                "Q",
                (
                    digest
                    for digest, code in zip(index.digests, index.codes, strict=True)
                    if code in codes and digest not in overlay
                ),
            )
            extra = [digest for digest, entry in overlay.items() if entry[0] in codes]
        if not extra:
            return SortedDigests(values)
        values.extend(extra)
        return SortedDigests(sorted_unique(values))

    def counts(self) -> JournalCounts:
        """Series per latest status and bytes of the done ones, from the compact view (fast)."""
        with self._mutex:
            tally = [0, 0, 0, 0]
            done_bytes = 0
            done_file_bytes = 0
            index = self._index
            overlay = self._overlay
            for position, digest in enumerate(index.digests):
                if digest in overlay:
                    continue
                code = index.codes[position]
                tally[code] += 1
                if code == _DONE:
                    done_bytes += index.dicom[position]
                    done_file_bytes += index.file_bytes[position]
            for code, dicom, file_bytes, _, _ in overlay.values():
                tally[code] += 1
                if code == _DONE:
                    done_bytes += dicom
                    done_file_bytes += file_bytes
        return JournalCounts(
            verified=tally[_VERIFIED],
            done=tally[_DONE],
            failed=tally[_FAILED] + tally[_DAMAGED],
            damaged=tally[_DAMAGED],
            done_bytes=done_bytes,
            done_file_bytes=done_file_bytes,
        )

    def brief(self, digest: int) -> tuple[SeriesStatus, int, int] | None:
        """(status, DICOM bytes, file bytes) of the series with this UID digest, or None."""
        entry = self._overlay.get(digest)
        if entry is not None:
            return _STATUS_OF_CODE[entry[0]], entry[1], entry[2]
        position = self._index.find(digest)
        if position < 0:
            return None
        index = self._index
        return _STATUS_OF_CODE[index.codes[position]], index.dicom[position], index.file_bytes[position]

    def __len__(self) -> int:
        """Number of series the journal knows."""
        with self._mutex:
            overlay_new = sum(1 for digest in self._overlay if self._index.find(digest) < 0)
            return len(self._index) + overlay_new

    def iter_latest(
        self, *kinds: Kind, among: SortedDigests | None = None
    ) -> Generator[SeriesRecord, None, None]:
        """The latest record of every series (of the given kinds, if any), streamed one at a time.

        ``among`` keeps only the series whose UID digest it holds; the others are skipped
        before their JSON is parsed (``verify`` recording damage reads a few of many this way).
        Snapshot order first, then the order records were appended. Raises JournalError when a
        compaction replaced the snapshot since this view was read (reopen and try again).
        """
        codes = {_CODE_OF_KIND[kind] for kind in kinds} if kinds else None
        if codes is not None and _FAILED in codes:
            codes.add(_DAMAGED)
        with self._mutex:
            expected_version = self._snapshot_version
            segments = list(enumerate(self._segments))
            overlay = self._overlay
        self._check_version(expected_version)
        if codes is None or any(code in codes for code in self._index.codes):
            yield from self._iter_snapshot(codes, overlay, among)
        expected = Counter(entry[3] for entry in overlay.values())
        for number, name in segments:
            if name is None:
                continue
            matched = 0
            for line_number, record, _ in self._parse_segment(name):
                digest = uid_digest(record.series_uid)
                entry = overlay.get(digest)
                if entry is None or (entry[3], entry[4]) != (number, line_number):
                    continue
                matched += 1
                if (codes is None or entry[0] in codes) and (among is None or among.has(digest)):
                    yield record
            if matched != expected[number]:
                # The segment was folded and deleted by another process's compaction after this
                # view was read (the snapshot had been replaced before we opened it).
                raise _SnapshotReplacedError(
                    f"{self._storage.describe(name)}: compacted by another process while being read; "
                    "run the command again"
                )
        self._check_version(expected_version)

    def _iter_snapshot(
        self, codes: set[int] | None, overlay: dict[int, _Entry], among: SortedDigests | None
    ) -> Iterator[SeriesRecord]:
        opened = self._open_snapshot()
        if opened is None:
            return
        reader, header = opened
        where = self._storage.describe(SNAPSHOT_NAME)
        with reader:
            for number, line in enumerate(self._snapshot_lines(reader, int(str(header["records"]))), start=2):
                if overlay or codes is not None or among is not None:
                    digest = uid_digest(_fast_uid(line))
                    if digest in overlay or (among is not None and not among.has(digest)):
                        continue
                    if codes is not None:
                        position = self._index.find(digest)
                        if position < 0 or self._index.codes[position] not in codes:
                            continue
                try:
                    yield SeriesRecord.from_json(line)
                except ValueError as exc:
                    raise JournalError(f"{where}:{number}: bad snapshot record: {exc}") from exc

    def _check_version(self, expected: str | None) -> None:
        if self._storage.version(SNAPSHOT_NAME) != expected:
            raise _SnapshotReplacedError(
                f"{self._storage.describe(SNAPSHOT_NAME)}: the journal was compacted by another process "
                "while being read; run the command again"
            )

    # -- compatibility helpers (materialise everything: tests and small destinations only) ------

    def latest(self) -> dict[str, SeriesRecord]:
        """Series UID → latest record, all in memory: O(n) memory, for tests and small jobs only.

        Unlike :meth:`iter_latest` it starts over (with a fresh view) when a compaction by another
        process replaced the snapshot while reading, so it never returns a mix of generations.
        """
        for _ in range(_OPEN_ATTEMPTS):
            try:
                return {record.series_uid: record for record in self.iter_latest()}
            except _SnapshotReplacedError:
                with self._mutex:
                    self._reload()
        raise JournalError(f"{self._storage.describe('')}: the journal kept changing while being read")

    def get(self, series_uid: str) -> SeriesRecord | None:
        """The latest record of one series (streams the journal when it is known: O(n) time)."""
        if self.status_of(series_uid) is None:
            return None
        for record in self.iter_latest():
            if record.series_uid == series_uid:
                return record
        return None

    def records_for(self, uids: Iterable[str]) -> dict[str, SeriesRecord]:
        """The latest records of a few series, in one streaming pass."""
        wanted = {uid for uid in uids if self.status_of(uid) is not None}
        if not wanted:
            return {}
        return {record.series_uid: record for record in self.iter_latest() if record.series_uid in wanted}

    def done_uids(self) -> frozenset[str]:
        """All done UIDs as strings: O(n) memory, for tests and small jobs (use :meth:`select`)."""
        return frozenset(record.series_uid for record in self.iter_latest("done"))

    def failed_uids(self) -> frozenset[str]:
        return frozenset(record.series_uid for record in self.iter_latest("failed"))

    def verified_uids(self) -> frozenset[str]:
        return frozenset(record.series_uid for record in self.iter_latest("verified"))

    # --- writing -----------------------------------------------------------------------------

    def append(self, record: SeriesRecord) -> None:
        """Append one record durably and update the merged view.

        Raises DiskFullError when the disk or quota is full and JournalError on any other
        failure; a failed append leaves nothing behind (the storage cuts its log back).
        """
        self.extend((record,))

    def extend(self, records: Iterable[SeriesRecord]) -> None:
        """Append several records with ONE durable write (group commit), all or none.

        Workers finishing at the same moment share one flush instead of queueing for one each.
        Every ``compact_every`` records the writer compacts (when no other process holds the
        lease), which keeps the overlay and the crash-recovery work bounded.
        """
        batch = list(records)
        if not batch:
            return
        data = b"".join((record.to_json() + "\n").encode("utf-8") for record in batch)
        with self._mutex:
            number = self._ensure_segment()
            name = self._segments[number]
            assert name is not None
            try:
                self._storage.append(name, data)
            except (DiskFullError, JournalError):
                self._finish_segment()  # whatever happened, append to a fresh log next time
                raise
            for offset, record in enumerate(batch):
                self._overlay[uid_digest(record.series_uid)] = (
                    _code(record),
                    record.dicom_bytes or 0,
                    record.total_file_bytes,
                    number,
                    self._own_lines + offset,
                )
            self._own_lines += len(batch)
            self.appended += len(batch)
            if self._own_lines >= _ROTATE_LINES:
                self._finish_segment()
            if len(self._overlay) >= self._next_compaction and not self._compact(wait_s=0.0, forced=False):
                self._next_compaction = len(self._overlay) + max(1, self._compact_every // 4)

    def _ensure_segment(self) -> int:
        if self._own_segment is not None:
            return self._own_segment
        base = f"{time.time_ns():020d}-{host_name()}-{os.getpid()}-{secrets.token_hex(4)}{_SEGMENT_SUFFIX}"
        owner = json.dumps({"host": host_name(), "pid": os.getpid(), "run": self._run_id}).encode()
        self._storage.create(f"{WRITERS_DIR}/{base}", owner)
        self._segments.append(f"{SEGMENT_DIR}/{base}")
        self._own_segment = len(self._segments) - 1
        self._own_lines = 0
        return self._own_segment

    def _finish_segment(self) -> None:
        """Stop appending to this writer's segment; it becomes foldable by any compaction."""
        if self._own_segment is None:
            return
        name = self._segments[self._own_segment]
        assert name is not None
        close_log = getattr(self._storage, "close_log", None)
        if close_log is not None:
            close_log(name)
        self._storage.delete(f"{WRITERS_DIR}/{name.rsplit('/', 1)[-1]}")
        self._foldable.add(self._own_segment)
        self._own_segment = None
        self._own_lines = 0

    # --- compaction --------------------------------------------------------------------------

    def compact(self, *, wait_s: float = 0.0, then: Callable[[], None] | None = None) -> int:
        """Fold every finished segment this view holds into a new snapshot; delete those segments.

        Takes the compaction lease first (waiting up to ``wait_s`` seconds for another holder);
        without it nothing is changed. This writer's own segment is finished first (appending
        goes on in a new one). When nothing can be folded the existing snapshot is left as it
        is. ``then`` runs afterwards while the lease is still held: files derived from the whole
        journal (metadata.csv, a catalog) are written there, so two processes finishing at once
        never race on them. Returns the number of series in the merged view.
        """
        with self._mutex:
            self._finish_segment()
            self._compact(wait_s=wait_s, forced=True, then=then)
            return len(self)

    def _compact(self, *, wait_s: float, forced: bool, then: Callable[[], None] | None = None) -> bool:
        """Compact under the lease; False when another process holds it."""
        if not forced:
            self._finish_segment()
        token = self._acquire_lease(wait_s)
        if token is None:
            return False
        try:
            if self._storage.version(SNAPSHOT_NAME) != self._snapshot_version:
                self._reload()
            folded = sorted(number for number in self._foldable if self._segments[number] is not None)
            stale = self._snapshot_version is None or self._snapshot_format != _SNAPSHOT_FORMAT
            if folded or stale:
                self._fold(folded)
            if then is not None:
                then()
            return True
        finally:
            self._release_lease(token)

    def _fold(self, folded: list[int]) -> None:
        """Write the new snapshot, then delete the folded segments (the lease is held)."""
        self._write_snapshot(folded)
        for number in folded:
            name = self._segments[number]
            assert name is not None
            self._storage.delete_log(name)
            # A writer that died left its registration behind; its segment is folded now.
            self._storage.delete(f"{WRITERS_DIR}/{name.rsplit('/', 1)[-1]}")
            self._segments[number] = None
        sync = getattr(self._storage, "sync_prefix", None)
        if sync is not None and folded:
            sync(SEGMENT_DIR)
        self._foldable.difference_update(folded)
        self._next_compaction = len(self._overlay) + self._compact_every

    def _reload(self) -> None:
        """Adopt the current state of the storage (another process compacted since we read)."""
        own = self._segments[self._own_segment] if self._own_segment is not None else None
        for _ in range(_OPEN_ATTEMPTS):
            fresh = Journal(self._storage, run_id=self._run_id, compact_every=self._compact_every)
            if fresh._read_all():
                break
        else:
            raise JournalError(f"{self._storage.describe('')}: the journal kept changing while compacting")
        self._index = fresh._index
        self._overlay = fresh._overlay
        self._snapshot_version = fresh._snapshot_version
        self._snapshot_format = fresh._snapshot_format
        self._segments = fresh._segments
        self._foldable = fresh._foldable
        # This writer's live segment is in the fresh listing (it is not foldable while live).
        self._own_segment = self._segments.index(own) if own in self._segments else None
        if self._own_segment is not None:
            self._foldable.discard(self._own_segment)

    def _write_snapshot(self, folded: list[int]) -> None:
        """Stream base records not superseded + the folded segments' latest records + the index."""
        folded_set = set(folded)
        # The overlay already holds the latest entry of every series recorded in a segment
        # (parsed when the view was read or appended by this writer), so the folded segments are
        # not parsed again: a series whose latest record is in a segment still live keeps
        # being served by the overlay, and its snapshot line and index entry stay as they were.
        newer = {digest: entry for digest, entry in self._overlay.items() if entry[3] in folded_set}
        new_index = self._index.merged(newer)
        total = len(new_index)
        expected_version = self._snapshot_version

        def chunks() -> Iterator[bytes]:
            compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).compressobj()
            header = {"snapshot": _SNAPSHOT_FORMAT, "records": total, "created_at": time.time()}
            pending = [json.dumps(header).encode() + b"\n"]
            size = 0
            written = 0
            for line in self._base_lines():
                if uid_digest(_fast_uid(line)) in newer:
                    continue
                pending.append(line + b"\n")
                written += 1
                size += len(line)
                if size >= _CHUNK_BYTES:
                    yield compressor.compress(b"".join(pending))
                    pending, size = [], 0
            for number in folded:
                name = self._segments[number]
                assert name is not None
                for line_number, uid, raw in self._segment_lines(name):
                    entry = newer.get(uid_digest(uid))
                    if entry is None or (entry[3], entry[4]) != (number, line_number):
                        continue
                    pending.append(raw + b"\n")
                    written += 1
                    size += len(raw)
                    if size >= _CHUNK_BYTES:
                        yield compressor.compress(b"".join(pending))
                        pending, size = [], 0
            if written != total:
                raise JournalError(
                    f"{self._storage.describe(SNAPSHOT_NAME)}: compaction produced {written} records for "
                    f"{total} series (a UID digest collision?); the old snapshot is kept"
                )
            yield compressor.compress(b"".join(pending))
            for column in new_index.columns():  # the arrays' own buffers: no 25-bytes-per-series copy
                yield compressor.compress(memoryview(column).cast("B"))
            if self._storage.version(SNAPSHOT_NAME) != expected_version:
                raise JournalError("the snapshot changed during compaction; the new one is discarded")
            yield compressor.flush()

        self._storage.write_from(SNAPSHOT_NAME, chunks())
        self._index = new_index
        self._snapshot_version = self._storage.version(SNAPSHOT_NAME)
        self._snapshot_format = _SNAPSHOT_FORMAT
        # Overlay entries from folded segments are in the snapshot now; later ones stay.
        self._overlay = {
            digest: entry for digest, entry in self._overlay.items() if entry[3] not in folded_set
        }

    def _base_lines(self) -> Iterator[bytes]:
        opened = self._open_snapshot()
        if opened is None:
            return
        reader, header = opened
        with reader:
            yield from self._snapshot_lines(reader, int(str(header["records"])))

    # -- the lease ------------------------------------------------------------------------------

    def _acquire_lease(self, wait_s: float) -> str | None:
        token = secrets.token_hex(8)
        owner = json.dumps(
            {"host": host_name(), "pid": os.getpid(), "token": token, "at": time.time(), "run": self._run_id}
        ).encode()
        deadline = time.monotonic() + wait_s
        unreadable_seen: str | None = None
        while True:
            if self._storage.create(LEASE_NAME, owner):
                return token
            data = self._storage.read(LEASE_NAME)
            version = self._storage.version(LEASE_NAME)
            if data is None:
                continue  # released between our create and read: try again at once
            try:
                holder = json.loads(data)
                abandoned = (holder["host"] == host_name() and not pid_is_alive(int(holder["pid"]))) or (
                    time.time() - float(holder["at"]) > _LEASE_STALE_S
                )
            except (ValueError, KeyError, TypeError):
                # Unreadable: being written now, or left by a crash mid-create. Abandoned only when
                # it is still the same unreadable object on a later look.
                abandoned = unreadable_seen is not None and unreadable_seen == version
                unreadable_seen = version
            if abandoned:
                self._storage.delete(LEASE_NAME)
                continue
            if time.monotonic() >= deadline:
                return None
            time.sleep(_LEASE_POLL_S)

    def _release_lease(self, token: str) -> None:
        data = self._storage.read(LEASE_NAME)
        try:
            mine = data is not None and json.loads(data).get("token") == token
        except ValueError:
            mine = False
        if mine:
            self._storage.delete(LEASE_NAME)

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish this writer's segment. Records already appended stay durable."""
        with self._mutex:
            self._finish_segment()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
