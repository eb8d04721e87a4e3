"""The object-store home of a destination: ``s3://bucket/prefix`` with the guarantees of a directory.

Atomicity (the contract, documented in the README): a series is stored as ONE object, its
verified archive (``keep = "tar.zst"`` or ``"zip"``) at ``<prefix>/<layout path>/<file>``. The
archive is streamed into a multipart upload on its final key while the series downloads and
verifies (:meth:`BucketDestination.stream_archive`: parts of 8 MiB, a few at most in memory, no
local copy of the archive); the upload is completed only after the series verified, and aborted
otherwise. An archive smaller than one part is one PUT after verification. S3 makes a key
visible only when its PUT or CompleteMultipartUpload succeeds, so whoever lists the bucket sees
a series whole, after it verified, or not at all, even after a SIGKILL (which leaves the upload
open and invisible; the next run aborts it). ``keep = "dicom"`` is
refused for buckets (exit 2): S3 has no atomic multi-object publish, so a lister could see part
of a series while its objects were copied into place, whatever the staging scheme.

The journal's ``done`` record is written after the upload completed (the worker's usual
order: ``verified`` -> publish -> ``done``); reconciliation adopts a series whose object exists
with the verified size when the run died before ``done``, and a rerun never fetches a committed
series again. Under the bucket lock, startup aborts every multipart upload left open under the
prefix (only a dead run can own one; a shard only those of its own series, see
:meth:`BucketDestination.cleanup_leftovers`) and removes local staging of dead runs.

Local working space (the staging of tar.zst members, one at a time; report files before upload) lives in
``$TCIA_FETCH_WORK_DIR`` or ``$XDG_CACHE_HOME/tcia-fetch/s3/<bucket>-<hash>`` (``~/.cache/...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.errors import DestinationBusyError, FinalPathExistsError, InputError
from tcia_fetch.series.archive import ARCHIVE_SUFFIX, check_tar_zst
from tcia_fetch.store._fs import DirectorySyncs, host_name, pid_is_alive
from tcia_fetch.store._objstore import (
    BlockingObjectStore,
    LoopCaller,
    ObjectInfo,
    StreamedObject,
    open_object_store,
)
from tcia_fetch.store.destination import Destination, _checked_parts
from tcia_fetch.store.digests import LAST_PLAN_DIGESTS
from tcia_fetch.store.journal import DEFAULT_COMPACT_EVERY, Journal
from tcia_fetch.store.location import BucketLocation
from tcia_fetch.store.lock import DEFAULT_STALE_AFTER_S, LOCK_NAME, _process_start
from tcia_fetch.store.objstate import STATE_PREFIX, ObjectStateStorage
from tcia_fetch.store.reconcile import Damage, Reconciliation
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.store.runlock import lock_name_for

if TYPE_CHECKING:
    from tcia_fetch.plan.shard import Shard

__all__ = [
    "BucketDestination",
    "BucketLock",
    "refuse_unsupported_keep",
    "remove_dead_worker_dirs",
    "remove_worker_work_dir",
    "worker_work_dir",
]

_SHARD_LOCK: Final = re.compile(r"^lock\.shard-(\d+)-of-(\d+)$")
#: Files the run writes at the destination root and in the state area, uploaded at the end.
ROOT_OUTPUTS: Final = ("metadata.csv", "catalog.parquet", "instances.parquet")
#: In upload order: the plan's digests before the ``last-plan.json`` that names them, so a
#: reader (``status``) never finds a plan whose digests are missing.
STATE_OUTPUTS: Final = ("last-report.json", LAST_PLAN_DIGESTS, "last-plan.json")


def refuse_unsupported_keep(keep: str) -> None:
    """keep=dicom cannot be published atomically to a bucket: refuse it before any traffic."""
    if keep == "dicom":
        raise InputError(
            "keep = 'dicom' is not supported for s3:// destinations: S3 cannot publish many objects "
            "atomically, so a listing could show part of a series. Use --keep tar.zst (one "
            "compressed archive per series) or --keep zip",
            source="--keep",
        )


def default_work_dir(location: BucketLocation, shard: Shard | None = None) -> Path:
    """The local work dir of a bucket destination; each shard its own, as shards of one array
    job may share a host (their report mirrors must not mix)."""
    explicit = os.environ.get("TCIA_FETCH_WORK_DIR")
    if explicit:
        base = Path(explicit)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache) / "tcia-fetch" / "s3"
    digest = hashlib.sha256(location.url.encode("utf-8")).hexdigest()[:12]
    suffix = f"-{shard.name}" if shard is not None and shard.count > 1 else ""
    return base / f"{location.bucket}-{digest}{suffix}"


#: A Dask worker's own work dir under the destination's: ``dask-<pid>-<host>``.
_WORKER_DIR: Final = re.compile(r"^dask-(\d+)-(.+)$")


def worker_work_dir(location: BucketLocation) -> Path:
    """This process's own local work dir as a Dask worker writing to ``location``.

    Each worker process stages apart, under the destination's work dir: the client and workers
    on one host (``local:N``) must never clean up or mix each other's staging, and a worker's
    closed home removes its directory whole (:func:`remove_worker_work_dir`).
    """
    return default_work_dir(location) / f"dask-{os.getpid()}-{host_name()}"


def remove_worker_work_dir(work_dir: Path) -> None:
    """A worker's work dir, once its home is closed (its staging was discarded series by series)."""
    shutil.rmtree(work_dir, ignore_errors=True)


def remove_dead_worker_dirs(location: BucketLocation) -> int:
    """Work dirs of this host's Dask workers that were killed (their pid is gone); how many.

    The client calls it at the end of a run, when it alone holds the destination: a SIGKILLed
    worker never removed its own. Other hosts' directories are theirs to clean up.
    """
    base = default_work_dir(location)
    removed = 0
    try:
        entries = list(base.iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = _WORKER_DIR.match(entry.name)
        if match is None or match.group(2) != host_name() or pid_is_alive(int(match.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


class BucketDestination:
    """One ``s3://`` destination. Same per-series methods as :class:`Destination`."""

    def __init__(
        self,
        location: BucketLocation,
        *,
        store: BlockingObjectStore | None = None,
        work_dir: Path | None = None,
        policy: RetryPolicy | None = None,
        portal: LoopCaller | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.location = location
        self.store = store or open_object_store(location, policy=policy, portal=portal)
        #: The shard this run is (None: the whole job): its lock, and whose leftovers it may clear.
        self.shard = shard
        #: Archives being streamed into the bucket, by the staging directory of their attempt.
        self._streams: dict[Path, StreamedObject] = {}
        self._streams_mutex = threading.Lock()
        self.state = ObjectStateStorage(self.store, location)
        work = work_dir or default_work_dir(location, shard)
        #: The local work dir (staging, report mirrors).
        self.work_dir = work
        self._local = Destination(work)
        #: Local mirrors: files written here by the run are uploaded by :meth:`upload_outputs`.
        self.root = self._local.root / "out"
        self.state_dir = self._local.root / "state"

    def __str__(self) -> str:
        return self.location.url

    def close(self) -> None:
        """Close the object-store client (call from a thread, as every sync method here)."""
        self.store.close()

    # --- setup -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check bucket and credentials (fatal exit 3 before any download), set up local staging."""
        self.store.check_bucket()
        self._local.prepare()
        self.root.mkdir(exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)

    def final_key(self, relative: PurePosixPath, name: str) -> str:
        return self.location.key("/".join((*_checked_parts(relative), name)))

    # --- staging and publishing ------------------------------------------------------------------

    def new_staging(self, series_uid: str) -> Path:
        return self._local.new_staging(series_uid)

    def discard(self, staging: Path) -> None:
        """Give up an attempt: abort its streamed upload (nothing was visible) and its staging."""
        with self._streams_mutex:
            stream = self._streams.pop(staging, None)
        if stream is not None:
            self.store.call(stream.abort)
        self._local.discard(staging)

    def stream_archive(self, staging: Path, relative: PurePosixPath, name: str) -> StreamedObject:
        """Where the attempt in ``staging`` writes its archive: a multipart upload to the final key.

        The worker writes into it (in its extractor thread), drains full parts on the event loop
        between writes, seals it once the series verified, and :meth:`publish` completes it.
        """
        key = self.final_key(relative, name)
        stream = self.store.aio.stream(key)
        # A single write that would buffer several parts (a huge tar member finished at once)
        # uploads them from the writing thread instead of growing the buffer.
        stream.overflow = lambda: self.store.call(stream.drain)
        with self._streams_mutex:
            self._streams[staging] = stream
        return stream

    def publish(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> str:
        """Put the verified archive at its final key (never over an existing one); return the key.

        ``deferred`` is unused: an object is durable once its upload completes; a bucket has no
        directories to sync."""
        return self._upload(staging, relative, overwrite=False)

    def replace(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> str:
        """Swap a damaged series' object for a freshly verified one (completing replaces atomically)."""
        return self._upload(staging, relative, overwrite=True)

    def _upload(self, staging: Path, relative: PurePosixPath, *, overwrite: bool) -> str:
        with self._streams_mutex:
            stream = self._streams.get(staging)
        if stream is not None:
            if not overwrite and self.store.head(stream.key) is not None:
                raise FinalPathExistsError(
                    f"s3://{self.store.bucket}/{stream.key} already exists; tcia-fetch never overwrites an "
                    "object it did not record (remove it, or use --repair for a series this destination "
                    "recorded)"
                )
            self.store.call(stream.commit)
            with self._streams_mutex:
                self._streams.pop(staging, None)
            self._local.discard(staging)
            return stream.key
        files = sorted(staging.iterdir())
        if len(files) != 1 or not files[0].is_file():
            raise InputError("a bucket destination stores one archive per series (keep zip or tar.zst)")
        key = self.final_key(relative, files[0].name)
        if not overwrite and self.store.head(key) is not None:
            raise FinalPathExistsError(
                f"s3://{self.store.bucket}/{key} already exists; tcia-fetch never overwrites an object "
                "it did not record (remove it, or use --repair for a series this destination recorded)"
            )
        self.store.upload_file(key, files[0])
        self._local.discard(staging)
        return key

    # --- leftovers ----------------------------------------------------------------------------------

    def cleanup_leftovers(self) -> int:
        """Local staging of dead runs, and the multipart uploads dead runs left open under the prefix.

        Called under the run's bucket lock. A whole-job run runs alone (shards are refused while
        it holds its lock), so every open upload is a dead run's. A shard runs beside the other
        shards, so it aborts only the uploads of ITS series (the archive is named after the series
        UID, and its shard holds no other live process), and state-area uploads (a snapshot) only
        once they are older than the stale-lock age: a live shard may be writing one.
        """
        removed = self._local.cleanup_leftovers()
        prefix = self.location.prefix + "/" if self.location.prefix else ""
        state = self.location.key(STATE_PREFIX) + "/"
        for upload in self.store.open_uploads(prefix):
            if self.shard is not None and not self._shard_may_abort(upload.key, upload.initiated, state):
                continue
            self.store.abort_upload(upload.key, upload.upload_id)
            removed += 1
        return removed

    def _shard_may_abort(self, key: str, initiated: float, state: str) -> bool:
        assert self.shard is not None
        if key.startswith(state):
            return time.time() - initiated > DEFAULT_STALE_AFTER_S
        name = key.rsplit("/", 1)[-1]
        for suffix in (ARCHIVE_SUFFIX, ".zip"):
            if name.endswith(suffix):
                return self.shard.owns(name[: -len(suffix)])
        return False

    # --- run state ---------------------------------------------------------------------------------

    def open_journal(self, run_id: str, *, compact_every: int = DEFAULT_COMPACT_EVERY) -> Journal:
        """The run journal, read from and appended to in the bucket (any machine can resume)."""
        return Journal.open(self.state, run_id=run_id, compact_every=compact_every)

    def acquire_lock(self, run_id: str, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> BucketLock:
        """This run's lock: ``lock`` (whole job) or ``lock.shard-K-of-N``, as on disk (store.runlock).

        Shards of one split run side by side; a second process on the same shard is refused with
        who holds it; a whole-job run and shards (or shards of another N) refuse each other. Each
        run takes its own lock first, then looks for live locks of the other kind and, seeing
        one, lets go of its own and refuses: two racing runs may both refuse, never both run.
        """
        lock = BucketLock.acquire(
            self, run_id=run_id, stale_after_s=stale_after_s, name=lock_name_for(self.shard)
        )
        try:
            conflict = self._lock_conflict(stale_after_s)
        except BaseException:
            lock.release()
            raise
        if conflict is not None:
            lock.release()
            raise DestinationBusyError(conflict)
        return lock

    def live_locks(self, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> list[tuple[str, Shard | None, str]]:
        """(name, shard or None for the whole job, holder) of every lock in the bucket still held."""
        from tcia_fetch.plan.shard import Shard

        found: list[tuple[str, Shard | None, str]] = []
        root = self.location.key(STATE_PREFIX) + "/"
        for info in self.store.list(root + LOCK_NAME):
            name = info.key[len(root) :]
            shard: Shard | None = None
            if name != LOCK_NAME:
                match = _SHARD_LOCK.match(name)
                if match is None:
                    continue
                index, count = int(match.group(1)), int(match.group(2))
                if not 0 <= index < count:
                    continue
                shard = Shard(index, count)
            data = self.state.read(name)
            if data is None:
                continue
            if time.time() - info.modified > stale_after_s or _holder_died_here(data):
                continue
            found.append((name, shard, _holder(data)))
        return found

    def _lock_conflict(self, stale_after_s: float) -> str | None:
        mine = lock_name_for(self.shard)
        sharded = self.shard is not None and self.shard.count > 1
        for name, other, holder in self.live_locks(stale_after_s):
            if name == mine:
                continue
            if other is None:
                if sharded:
                    return (
                        f"{self.location.url} is in use by a whole-job run ({holder}); shards and a "
                        "whole-job run never share a destination: wait for it to finish, or stop it and "
                        "run the shards"
                    )
                continue
            if not sharded:
                return (
                    f"{self.location.url} is in use by shard {other.label} ({holder}); a whole-job run "
                    "waits until every shard of the split has finished (tcia-fetch status shows which "
                    "are running)"
                )
            assert self.shard is not None
            if other.count != self.shard.count:
                return (
                    f"{self.location.url} is in use by shard {other.label} of a split into {other.count}, "
                    f"not {self.shard.count} ({holder}); every shard of one destination must use the same N"
                )
        return None

    def upload_outputs(self) -> None:
        """Upload metadata.csv, the catalog and the report files the run wrote locally."""
        for name in ROOT_OUTPUTS:
            path = self.root / name
            if path.is_file():
                self.store.upload_file(self.location.key(name), path)
                path.unlink(missing_ok=True)  # a spool, not a cache: never uploaded twice

        # STATE_OUTPUTS, or a shard's own ``last-report.shard-K-of-N.json`` and plan: every file
        # the run left in the state mirror, the plan digests before the plans that name them.
        def order(path: Path) -> tuple[bool, bool, str]:
            return (not path.name.endswith(".digests"), path.name.startswith("last-plan"), path.name)

        files = (p for p in self.state_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        written = sorted(files, key=order)
        for path in written:
            self.state.write(path.name, path.read_bytes())
            # The local copy is only a mirror for this upload: a later run that writes no plan
            # (interrupted) must not upload this one again over a newer run's from elsewhere.
            path.unlink(missing_ok=True)
        reports = self.state_dir / "reports"
        if reports.is_dir():
            for path in sorted(reports.iterdir()):
                self.state.write(f"reports/{path.name}", path.read_bytes())
            shutil.rmtree(reports, ignore_errors=True)

    # --- checks ----------------------------------------------------------------------------------------

    def stored_objects(self) -> dict[str, ObjectInfo]:
        """Every object under the prefix except the state area, by key (one paged listing)."""
        prefix = self.location.prefix + "/" if self.location.prefix else ""
        state = self.location.key(STATE_PREFIX) + "/"
        return {info.key: info for info in self.store.list(prefix) if not info.key.startswith(state)}

    def inspect(
        self,
        record_path: str | None,
        files: tuple[tuple[str, int, str | None], ...],
        stored: dict[str, ObjectInfo],
    ) -> tuple[tuple[str, ...], bool]:
        """(problems, exists) of one recorded series against a listing: keys present, sizes equal."""
        if record_path is None:
            return ("no key recorded",), False
        problems: list[str] = []
        exists = False
        for name, size, _ in files:
            key = self.final_key(PurePosixPath(record_path), name)
            info = stored.get(key)
            if info is None:
                problems.append(f"s3://{self.store.bucket}/{key} is missing")
                continue
            exists = True
            if info.size != size:
                problems.append(f"{key} has {info.size} bytes, recorded {size}")
        return tuple(problems), exists

    def reconcile(self, journal: Journal) -> Reconciliation:
        """The bucket version of store.reconcile.reconcile: same outcomes, one listing."""
        removed = self.cleanup_leftovers()
        stored = self.stored_objects()
        done: list[str] = []
        adopted: list[str] = []
        damaged: list[Damage] = []
        pending: list[str] = []
        to_adopt = []
        for record in journal.iter_latest("verified", "done"):  # streamed, one listing
            uid = record.series_uid
            files = tuple((f.name, f.size, f.md5) for f in record.files)
            problems, exists = self.inspect(record.path, files, stored)
            if record.status == "done":
                (damaged.append(Damage(uid, record.path, problems)) if problems else done.append(uid))
            elif not exists:
                pending.append(uid)
            elif problems:
                reasons = ("found after a crash but unlike the record", *problems)
                damaged.append(Damage(uid, record.path, reasons))
            else:
                to_adopt.append(record.with_status("done", run_id=journal.run_id))
                adopted.append(uid)
                done.append(uid)
        journal.extend(to_adopt)  # after the streamed pass: never append to what is being read
        return Reconciliation(removed, tuple(done), tuple(adopted), tuple(damaged), tuple(pending))

    def published_problems(self, record: SeriesRecord, *, check_md5: bool) -> tuple[str, ...]:
        """The problems with one recorded series in the bucket (HEAD per object, then with
        ``check_md5`` a full re-read); empty when it matches its record. For one series at a time
        (a Dask retry deciding whether to adopt): :meth:`recheck` lists the bucket once instead."""
        if record.path is None:
            return ("no key recorded",)
        files = tuple((f.name, f.size, f.md5) for f in record.files)
        if not files:
            return ("no object recorded",)
        stored: dict[str, ObjectInfo] = {}
        for name, _, _ in files:
            key = self.final_key(PurePosixPath(record.path), name)
            info = self.store.head(key)
            if info is not None:
                stored[key] = info
        problems = list(self.inspect(record.path, files, stored)[0])
        if check_md5 and not problems:
            for name, _, md5 in files:
                key = self.final_key(PurePosixPath(record.path), name)
                problems += self._rehash(key, name, md5, record)
        return tuple(problems)

    def recheck(self, journal: Journal, *, check_md5: bool) -> list[Damage]:
        """``verify``: sizes from one listing; with ``check_md5`` every object is re-read and re-hashed
        (a tar.zst member by member against its MD5SUMS). S3 ETags are not used as checksums: a
        multipart ETag is not an MD5 of the object."""
        stored = self.stored_objects()
        found: list[Damage] = []
        for record in journal.iter_latest("done"):  # streamed
            uid = record.series_uid
            files = tuple((f.name, f.size, f.md5) for f in record.files)
            problems = list(self.inspect(record.path, files, stored)[0])
            if check_md5 and not problems and record.path is not None:
                for name, _, md5 in files:
                    key = self.final_key(PurePosixPath(record.path), name)
                    problems += self._rehash(key, name, md5, record)
            if problems:
                found.append(Damage(uid, record.path, tuple(problems)))
        return found

    def _rehash(self, key: str, name: str, md5: str | None, record: object) -> list[str]:
        blocks = self.store.iter_blocks(key)
        if blocks is None:
            return [f"{key} is missing"]
        if name.endswith(ARCHIVE_SUFFIX):
            check = check_tar_zst(blocks)
            problems = list(check.problems)
            digest = check.md5
            count = getattr(record, "instance_count", None)
            if count is not None and check.dicom_files != count:
                problems.append(f"{name} holds {check.dicom_files} DICOM files, recorded {count}")
        else:
            hasher = hashlib.md5(usedforsecurity=False)
            for block in blocks:
                hasher.update(block)
            digest, problems = hasher.hexdigest(), []
        if md5 is not None and digest != md5.lower():
            problems.append(f"{name} has MD5 {digest}, recorded {md5}")
        return problems


@dataclass(slots=True)
class BucketLock:
    """The destination lock in a bucket: a create-exclusive PUT with owner info and a heartbeat.

    The rule of the directory lock (:mod:`tcia_fetch.store.lock`): a holder on THIS host whose
    process is gone (dead pid, or the pid now belongs to a newer process) is proof, and its lock
    is taken over at once, so a rerun after a SIGKILL or a crash does not wait. A holder on
    another host cannot be checked: its lock is taken over only by age, when the object was last
    written (server time, ``LastModified``; the heartbeat rewrites it) more than
    ``stale_after_s`` ago.

    Taking over deletes the judged object and creates a new one exclusively; just before the
    delete the object's ETag is compared with the one judged, so a lock that was refreshed or
    re-taken meanwhile is judged again. (S3 has no conditional delete everywhere, so a tiny
    window remains; a holder that lost its lock that way learns it at its next heartbeat.)
    """

    home: BucketDestination
    token: str
    body: dict[str, object]
    released: bool = False
    #: ``lock`` for a whole-job run, ``lock.shard-K-of-N`` for a shard (store.runlock's names).
    name: str = LOCK_NAME

    @classmethod
    def acquire(
        cls,
        home: BucketDestination,
        *,
        run_id: str,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        name: str = LOCK_NAME,
    ) -> BucketLock:
        token = secrets.token_hex(8)
        body: dict[str, object] = {
            "host": host_name(),
            "pid": os.getpid(),
            "proc_start": _process_start(os.getpid()),
            "run_id": run_id,
            "started_at": time.time(),
            "token": token,
        }
        key = home.location.key(f"{STATE_PREFIX}/{name}")
        for _ in range(5):
            if home.state.create(name, json.dumps(body).encode("utf-8")):
                return cls(home, token, body, name=name)
            info = home.store.head(key)
            if info is None:
                continue  # released meanwhile
            data = home.state.read(name)
            if data is None:
                continue  # released meanwhile
            age = time.time() - info.modified
            if age <= stale_after_s and not _holder_died_here(data):
                raise DestinationBusyError(
                    f"{home.location.url} is in use by {_holder(data)} (lock s3://{home.store.bucket}/{key}, "
                    f"refreshed {age:.0f}s ago; taken over after {stale_after_s:.0f}s without a "
                    "heartbeat, or at once when its process on this host has died)"
                )
            # Dead (this host) or stale by age: take it over, unless it changed since it was judged.
            now = home.store.head(key)
            if now is not None and now.etag == info.etag:
                home.state.delete(name)
        raise DestinationBusyError(f"could not take the lock of {home.location.url}: other runs keep racing")

    def heartbeat(self) -> None:
        current = self.home.state.read(self.name)
        if current is None or _token(current) != self.token:
            raise DestinationBusyError(
                f"lost the lock of {self.home.location.url}: {_holder(current)} took it"
            )
        self.body["heartbeat_at"] = time.time()
        self.home.state.write(self.name, json.dumps(self.body).encode("utf-8"))

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        current = self.home.state.read(self.name)
        if current is not None and _token(current) == self.token:
            self.home.state.delete(self.name)


def _token(data: bytes) -> object:
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document.get("token") if isinstance(document, dict) else None


def _holder_died_here(data: bytes) -> bool:
    """Whether the lock's holder ran on this host and its process is gone (proof, not a guess).

    An unreadable lock, or one of another host, is never judged dead here (age decides).
    """
    try:
        document = json.loads(data)
        host = document["host"]
        pid = int(document["pid"])
        started = document.get("proc_start")
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    if host != host_name() or pid <= 0:
        return False
    if not pid_is_alive(pid):
        return True
    if pid == os.getpid():
        return False  # our own process: a lock we hold (or held) is never "dead"
    if started is None:
        return False
    now_started = _process_start(pid)
    return now_started is not None and now_started != started


def _holder(data: bytes | None) -> str:
    if data is None:
        return "nobody"
    try:
        doc = json.loads(data)
        return f"pid {doc.get('pid')} on host {doc.get('host')} (run {doc.get('run_id')})"
    except ValueError:
        return "an unreadable lock"
