"""The crash-safe run journal: what is done, verified or failed, without SQLite and without locks.

Layout of the state directory (``<root>/.tcia-fetch/``)::

    .tcia-fetch/
    ├── lock                                   destination lock (see lock.py)
    ├── snapshot.jsonl.zst                     compacted view: header line + one record per series
    ├── journal/
    │   ├── 01764075600123456789-nodeA-4711-3f9c2a1b.jsonl   one segment per writer (append-only)
    │   └── 01764079200987654321-nodeB-815-a0b1c2d3.jsonl    <run-start-ns>-<host>-<pid>-<nonce>
    ├── staging/                               private per-series staging dirs (destination.py)
    └── trash/                                 old trees being replaced by a repair

Why this design (reliability §0.5, §4.7): SQLite WAL does not work on NFS/Lustre and ``flock``
may silently succeed for everyone there. Here no two processes ever write the same file: each
writer appends to its own segment, one JSON line per state change, each append fsynced before it
returns. Readers merge the snapshot and then every segment in name order (the name starts with
the writer's start time in ns, zero-padded, so name order is time order); the latest record per
series wins. ``compact`` folds every segment into a new zstd snapshot (written atomically) and
deletes the segments whose writers have finished.

Several processes may write one destination at once (the shards of an array job, Dask workers),
so compaction is safe against them: it runs under an exclusive lease (``compact.lease``, the same
O_EXCL protocol as the destination lock, waited for when another live process holds it), re-reads
everything under that lease, and deletes a segment only when its writer has finished (its
``<segment>.sealed`` marker exists, written when a writer closes its segment; or its pid is dead on
this host; or the caller holds the whole destination exclusively) and only a *prefix* in name
order, so what remains is still newer than everything folded (the merge order stays exact).

What a caller may rely on:

* after ``append`` returns, the record survives a crash or power loss of this host;
* a crash mid-append leaves at most a torn last line, which ``open`` ignores;
* damage anywhere else (garbage mid-segment, an unreadable snapshot) raises :class:`JournalError`
  naming the file and line: history is never dropped silently;
* ``append`` is thread-safe (the engine calls it from worker threads).

This is the only module that imports zstandard.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import zstandard

from tcia_fetch.errors import DestinationBusyError, DiskFullError, JournalError, StorageError
from tcia_fetch.store._fs import describe_os_error, fsync_directory, host_name, pid_is_alive
from tcia_fetch.store.atomic import write_bytes_atomic_sync
from tcia_fetch.store.lock import DEFAULT_STALE_AFTER_S, DestinationLock, acquire_destination
from tcia_fetch.store.records import FileEntry, SeriesRecord

__all__ = [
    "COMPACT_LEASE",
    "SEGMENT_DIR",
    "SNAPSHOT_NAME",
    "FileEntry",
    "Journal",
    "JournalStatistics",
    "SeriesRecord",
]

SNAPSHOT_NAME: Final = "snapshot.jsonl.zst"
SEGMENT_DIR: Final = "journal"
_SEGMENT_SUFFIX: Final = ".jsonl"
_SNAPSHOT_FORMAT: Final = 1
_ZSTD_LEVEL: Final = 3
_OPEN_ATTEMPTS: Final = 5
COMPACT_LEASE: Final = "compact.lease"
_SEALED_SUFFIX: Final = ".sealed"
#: A live lease holder is waited for this long at most (a lease that stops being live is taken over).
_LEASE_WAIT_S: Final = DEFAULT_STALE_AFTER_S + 300.0


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` currently is (inode, size, mtime), or None when absent."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"{path}: {describe_os_error(exc)}") from exc
    return info.st_ino, info.st_size, info.st_mtime_ns


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """What ``open`` found: useful for the status command and for tests."""

    snapshot_records: int
    segments_read: int
    segment_records: int
    torn_lines_ignored: int


class Journal:
    """The merged view of every journal file plus this writer's own segment. Build with :meth:`open`."""

    def __init__(self, state_dir: Path, *, run_id: str) -> None:
        self._state_dir = state_dir
        self._segment_dir = state_dir / SEGMENT_DIR
        self._run_id = run_id
        self._latest: dict[str, SeriesRecord] = {}
        self._folded_segments: list[Path] = []
        self._own_segments: set[Path] = set()
        self._segment_path: Path | None = None
        self._segment_fd: int | None = None
        self._segment_offset = 0
        self._broken: str | None = None
        self._mutex = threading.Lock()
        self.statistics = JournalStatistics(0, 0, 0, 0)

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, *, run_id: str) -> Journal:
        """Read the snapshot and every segment, merge them, and get ready to append.

        A reader that does not hold the destination lock (``status``, ``verify``) may race with
        a compaction; when the snapshot changes or a listed segment vanishes while reading, the
        read starts over, so the view is never a mix of two generations.
        """
        for _ in range(_OPEN_ATTEMPTS):
            journal = cls(state_dir, run_id=run_id)
            if journal._read_all():
                return journal
        raise JournalError(f"{state_dir}: the journal kept changing while being read (compaction loop?)")

    def _read_all(self) -> bool:
        """Load snapshot and segments; False when a concurrent compaction was detected."""
        snapshot_before = _identity(self._state_dir / SNAPSHOT_NAME)
        snapshot_records = self._load_snapshot()
        try:
            names = sorted(name for name in os.listdir(self._segment_dir) if name.endswith(_SEGMENT_SUFFIX))
        except FileNotFoundError:
            names = []  # nothing written yet; created on the first append (so read-only use works)
        except OSError as exc:
            raise JournalError(f"{self._segment_dir}: cannot list: {describe_os_error(exc)}") from exc
        segment_records = 0
        torn = 0
        for name in names:
            segment = self._segment_dir / name
            loaded = self._load_segment(segment)
            if loaded is None:
                return False
            segment_records += loaded[0]
            torn += loaded[1]
            self._folded_segments.append(segment)
        if _identity(self._state_dir / SNAPSHOT_NAME) != snapshot_before:
            return False
        self.statistics = JournalStatistics(snapshot_records, len(names), segment_records, torn)
        return True

    def _load_snapshot(self) -> int:
        path = self._state_dir / SNAPSHOT_NAME
        try:
            compressed = path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise JournalError(f"{path}: cannot read the journal snapshot: {describe_os_error(exc)}") from exc
        try:
            data = (
                zstandard.ZstdDecompressor().decompress(compressed, max_output_size=0) if compressed else b""
            )
        except zstandard.ZstdError as exc:
            raise JournalError(
                f"{path}: the journal snapshot is damaged ({exc}); restore it from a backup: "
                "tcia-fetch will not guess which series are complete"
            ) from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JournalError(f"{path}: the journal snapshot is not UTF-8: {exc}") from exc
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise JournalError(f"{path}:1: the journal snapshot has no header line")
        try:
            header = json.loads(lines[0])
            declared = int(header["records"])
            if header.get("snapshot") != _SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported snapshot format {header.get('snapshot')!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{path}:1: bad snapshot header: {exc}") from exc
        if declared != len(lines) - 1:
            raise JournalError(f"{path}: the snapshot declares {declared} records but holds {len(lines) - 1}")
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = SeriesRecord.from_json(line)
            except ValueError as exc:
                raise JournalError(f"{path}:{number}: bad snapshot record: {exc}") from exc
            self._latest[record.series_uid] = record
        return declared

    def _load_segment(self, path: Path) -> tuple[int, int] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None  # folded into a new snapshot while we were reading
        except OSError as exc:
            raise JournalError(f"{path}: cannot read the journal segment: {describe_os_error(exc)}") from exc
        lines = data.split(b"\n")
        # A crash can leave a tail without newline, or (delayed allocation) a tail of NUL bytes.
        while lines and lines[-1].strip(b"\x00") == b"":
            lines.pop()
        records = 0
        torn = 0
        last = len(lines) - 1
        for index, line in enumerate(lines):
            try:
                record = SeriesRecord.from_json(line)
            except ValueError as exc:
                if index == last:
                    torn += 1
                    continue
                raise JournalError(
                    f"{path}:{index + 1}: damaged journal line ({exc}) followed by valid records; "
                    "refusing to guess what was lost"
                ) from exc
            self._latest[record.series_uid] = record
            records += 1
        return records, torn

    # --- the merged view ---------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    def latest(self) -> Mapping[str, SeriesRecord]:
        """Read-only view: series UID → its latest record."""
        return MappingProxyType(self._latest)

    def get(self, series_uid: str) -> SeriesRecord | None:
        return self._latest.get(series_uid)

    def done_uids(self) -> frozenset[str]:
        return frozenset(uid for uid, record in self._latest.items() if record.status == "done")

    def failed_uids(self) -> frozenset[str]:
        return frozenset(uid for uid, record in self._latest.items() if record.status == "failed")

    def verified_uids(self) -> frozenset[str]:
        return frozenset(uid for uid, record in self._latest.items() if record.status == "verified")

    # --- writing -----------------------------------------------------------------------------

    def append(self, record: SeriesRecord) -> None:
        """Append one record durably (write + fsync) and update the merged view.

        Raises DiskFullError when the disk or quota is full and JournalError on any other
        failure; after a failure that could not be undone the journal refuses further appends.
        """
        self.extend((record,))

    def extend(self, records: Iterable[SeriesRecord]) -> None:
        """Append several records with ONE write and ONE fsync (group commit), all or none.

        Workers finishing at the same moment share one flush instead of queueing for one each;
        a failed write is undone as a whole, so no torn batch is left behind.
        """
        batch = list(records)
        if not batch:
            return
        data = b"".join((record.to_json() + "\n").encode("utf-8") for record in batch)
        with self._mutex:
            if self._broken is not None:
                raise JournalError(f"the journal is unusable after an earlier failure: {self._broken}")
            fd = self._ensure_segment()
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError as exc:
                self._undo_partial_write(fd, exc)
                message = f"{self._segment_path}: cannot append to the journal: {describe_os_error(exc)}"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(message) from exc
                raise JournalError(message) from exc
            self._segment_offset += len(data)
            for record in batch:
                self._latest[record.series_uid] = record

    def _ensure_segment(self) -> int:
        if self._segment_fd is not None:
            return self._segment_fd
        name = f"{time.time_ns():020d}-{host_name()}-{os.getpid()}-{secrets.token_hex(4)}{_SEGMENT_SUFFIX}"
        path = self._segment_dir / name
        try:
            if not self._segment_dir.is_dir():
                self._segment_dir.mkdir(parents=True, exist_ok=True)
                fsync_directory(self._state_dir)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                fsync_directory(self._segment_dir)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            message = f"{path}: cannot create a journal segment: {describe_os_error(exc)}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(message) from exc
            raise JournalError(message) from exc
        self._segment_path = path
        self._segment_fd = fd
        self._segment_offset = 0
        return fd

    def _undo_partial_write(self, fd: int, cause: OSError) -> None:
        try:
            os.ftruncate(fd, self._segment_offset)
            os.fsync(fd)
        except OSError:
            self._broken = f"{self._segment_path}: {describe_os_error(cause)}"

    def compact(
        self,
        *,
        exclusive: bool = True,
        under_lease: Callable[[Mapping[str, SeriesRecord]], None] | None = None,
        lease_wait_s: float = _LEASE_WAIT_S,
    ) -> int:
        """Fold every segment into a new snapshot; delete the segments whose writers finished.

        Runs under the ``compact.lease`` (waiting up to ``lease_wait_s`` for a live holder) and
        re-reads the whole journal under it, so two processes compacting at once never drop each
        other's records. ``exclusive=True`` (the default, for a caller holding the whole-destination
        lock) says no other writer can be live, so every segment may be folded; a shard or a Dask
        run passes False and only finished writers' segments are folded. ``under_lease`` is called with the
        fresh merged view while the lease is held: metadata.csv is written there, so concurrent
        writers of it are serialised and the last one has seen every earlier record. This writer's
        own segment is sealed and a new one starts on the next append. Returns the view's size.
        """
        with self._mutex:
            self._close_segment()
        lease = _take_lease(self._state_dir, self._run_id, lease_wait_s)
        if lease is None:
            return len(self._latest)  # nothing folded, nothing lost: segments stay for the next one
        try:
            # Judge which writers finished BEFORE reading: a segment sealed after we read it may
            # have grown in between, and folding (deleting) it would lose that tail.
            finished = self._finished_segments()
            fresh = Journal.open(self._state_dir, run_id=self._run_id)
            with self._mutex:
                self._latest.update(fresh._latest)
            foldable: list[Path] = []
            for segment in fresh._folded_segments:
                if not (exclusive or segment in finished):
                    break  # keep this one and every later one: the merge order must stay exact
                foldable.append(segment)
            if foldable or not (self._state_dir / SNAPSHOT_NAME).exists():
                self._write_snapshot(list(fresh._latest.values()))
                self._delete_segments(foldable)
            if under_lease is not None:
                under_lease(fresh.latest())
            return len(fresh._latest)
        finally:
            lease.release()

    def _finished_segments(self) -> set[Path]:
        try:
            names = os.listdir(self._segment_dir)
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise JournalError(f"{self._segment_dir}: cannot list: {describe_os_error(exc)}") from exc
        segments = (self._segment_dir / name for name in names if name.endswith(_SEGMENT_SUFFIX))
        return {segment for segment in segments if self._writer_finished(segment)}

    def _writer_finished(self, segment: Path) -> bool:
        if segment in self._own_segments or segment.with_name(segment.name + _SEALED_SUFFIX).exists():
            return True
        # <start-ns>-<host>-<pid>-<nonce>.jsonl; a host name may itself contain "-".
        parts = segment.name.removesuffix(_SEGMENT_SUFFIX).rsplit("-", 2)
        head = parts[0].split("-", 1)
        if len(parts) != 3 or len(head) != 2 or not parts[1].isdigit():
            return False
        return head[1] == host_name() and not pid_is_alive(int(parts[1]))

    def _write_snapshot(self, records: list[SeriesRecord]) -> None:
        header = json.dumps(
            {"snapshot": _SNAPSHOT_FORMAT, "records": len(records), "created_at": time.time()}
        )
        body = "\n".join([header, *(record.to_json() for record in records)]) + "\n"
        compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).compress(
            body.encode("utf-8")
        )
        try:
            write_bytes_atomic_sync(self._state_dir / SNAPSHOT_NAME, compressed)
        except DiskFullError:
            raise
        except StorageError as exc:
            raise JournalError(f"cannot write the journal snapshot: {exc}") from exc

    def _delete_segments(self, folded: list[Path]) -> None:
        for segment in folded:
            for path in (segment, segment.with_name(segment.name + _SEALED_SUFFIX)):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise JournalError(
                        f"{path}: cannot remove a compacted segment: {describe_os_error(exc)}"
                    ) from exc
        self._folded_segments.clear()
        if folded:
            try:
                fsync_directory(self._segment_dir)
            except OSError as exc:
                raise JournalError(f"{self._segment_dir}: {describe_os_error(exc)}") from exc

    def _close_segment(self) -> None:
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            assert self._segment_path is not None
            self._folded_segments.append(self._segment_path)
            self._own_segments.add(self._segment_path)
            # The seal tells other processes' compactions this segment will never grow again.
            with contextlib.suppress(OSError):
                os.close(
                    os.open(
                        self._segment_path.with_name(self._segment_path.name + _SEALED_SUFFIX),
                        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                        0o644,
                    )
                )
            self._segment_fd = None
            self._segment_path = None
            self._segment_offset = 0

    def close(self) -> None:
        """Close this writer's segment. Records already appended stay durable."""
        with self._mutex:
            self._close_segment()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _take_lease(state_dir: Path, run_id: str, wait_s: float) -> DestinationLock | None:
    """The compaction lease, waiting while another live process holds it (None after ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        try:
            return acquire_destination(state_dir, run_id=run_id, lock_name=COMPACT_LEASE)
        except DestinationBusyError:
            if time.monotonic() >= deadline:
                return None
        except StorageError as exc:
            raise JournalError(f"cannot take the journal compaction lease: {exc}") from exc
        time.sleep(pause)
        pause = min(1.0, pause * 2)
