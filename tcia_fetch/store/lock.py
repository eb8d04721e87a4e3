"""One run per destination: a lock file that works where ``flock`` does not (NFS, Lustre, GPFS).

The lock is ``<state_dir>/lock`` (or another name, e.g. ``lock.shard-3-of-16``, for a run that
owns only part of a destination). It holds JSON ``{"host", "pid", "run_id", "started_at",
"token", "proc_start"}`` so a refused run can say who holds it, and the holder calls
:meth:`DestinationLock.heartbeat` every ~30 s, which touches the file's mtime.

**A lock never exists without its owner inside it.** The owner document is written to a
uniquely named temporary file beside the lock (``.lock~HOST~PID~NONCE.tmp``), fsynced, and only
then ``link()``-ed to the lock name. ``link`` is atomic and exclusive on local filesystems, NFS
(v2 onwards) and Lustre, unlike ``flock``, which may silently succeed for everyone there, and
unlike ``O_EXCL``-then-write, which leaves an empty lock when the writer dies in between
(reliability §0.5). EEXIST means "held". NFS may report an error for a ``link`` whose reply was
lost although it succeeded, so after any error the lock's inode is compared with the
temporary's (the classic ``st_nlink == 2`` idiom, stated exactly). The temporary is then
removed; a writer killed before that leaves it as litter, removed by the next start-up on this
host when its pid is dead, and by age by :meth:`Destination.cleanup_leftovers` otherwise.

A lock is *live* when its holder is on this host and its process exists (same pid and, on Linux,
the same start time, so a recycled pid does not count), or on another host and its heartbeat is
younger than ``stale_after_s`` (default 10 min). On this host a dead pid is proof: the lock is
taken over at once. On another host age is the only proof.

Taking over a dead lock happens under a takeover mutex, ``<lock name>.takeover``, created the same
way (temporary file, ``link``), so it also always names its owner. Holding it, the taker judges
the lock dead again, renames it aside (atomic), checks it moved the very file it judged (and
links it back otherwise), deletes it and drops the mutex; the ``link`` that follows picks the
single winner. A mutex whose owner is dead on this host is removed at once; a mutex older than
a minute is removed whoever owns it (a takeover takes milliseconds).

**Empty or unparsable locks and mutexes** cannot come from this protocol: they are left by an
older tcia-fetch (``O_EXCL`` create, then write) killed in between, or by damage. Such a file
is litter once it is older than :data:`UNREADABLE_LITTER_AGE_S` (5 s); younger, an older version
may be writing it right now, so the acquirer waits (a few seconds at most) instead of refusing.

The data protocol does not depend on this lock for correctness (unique staging names,
publish-without-overwrite, reconciliation); the lock prevents wasted double downloads and
interleaved reports. Clock skew between hosts shifts the stale window by the skew. Two narrow
races remain, both needing an unlucky coincidence (a lock released by a holder judged stale at
the very moment of a takeover, or two racers clearing an abandoned mutex at once); the holder
that loses its lock that way learns it at its next :meth:`DestinationLock.heartbeat`.

Filesystems without hard links (some FUSE and SMB mounts) answer ``link`` with EPERM or
EOPNOTSUPP; there the temporary is renamed into place with ``RENAME_NOREPLACE`` instead
(:func:`~tcia_fetch.store._fs.rename_no_replace`), still never leaving an empty lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import re
import secrets
import time
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Final, final

from tcia_fetch._crashpoint import crash_point
from tcia_fetch.errors import DestinationBusyError, InputError
from tcia_fetch.store._fs import fsync_directory, host_name, pid_is_alive, rename_no_replace, storage_error

__all__ = [
    "DEFAULT_STALE_AFTER_S",
    "LOCK_NAME",
    "UNREADABLE_LITTER_AGE_S",
    "DestinationLock",
    "LockHolder",
    "acquire_destination",
    "holder_is_live",
    "lock_litter_owner",
    "read_holder",
]

LOCK_NAME: Final = "lock"
DEFAULT_STALE_AFTER_S: Final = 600.0
#: An empty or unparsable lock or mutex older than this is litter (the protocol never makes one).
UNREADABLE_LITTER_AGE_S: Final = 5.0
_MUTEX_SUFFIX: Final = ".takeover"
_ABANDONED_MUTEX_AGE_S: Final = 60.0
#: Waiting is only ever for something that ends by itself (a young unreadable file, a mutex held
#: for milliseconds, or at worst a remote crashed taker's mutex ageing out): bound it anyway.
_PATIENCE_S: Final = _ABANDONED_MUTEX_AGE_S + 30.0
_FIRST_PAUSE_S: Final = 0.002
_LONGEST_PAUSE_S: Final = 0.25
_LOCK_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: ``.<lock name>[.takeover|.stale]~<host>~<pid>~<nonce>.tmp``: temporaries and set-aside files.
_LITTER_RE: Final = re.compile(
    r"\.(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)~(?P<host>[^~]+)~(?P<pid>[0-9]+)~[0-9a-f]+\.tmp"
)
_LINK_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


@dataclasses.dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds (or held) a destination lock or takeover mutex, read back from the file."""

    host: str
    pid: int
    run_id: str
    started_at: float
    token: str
    heartbeat_at: float
    inode: tuple[int, int]
    #: The holder's process start time (Linux clock ticks since boot), to tell a recycled pid.
    proc_start: int | None = None

    @property
    def readable(self) -> bool:
        """False for an empty or unparsable file (an older version's half-written lock)."""
        return self.pid > 0

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.started_at, tz=datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
        return f"pid {self.pid} on host {self.host} (run {self.run_id}) since {since}"


def _identity(holder: LockHolder) -> tuple[str, tuple[int, int], float]:
    """What must not change between judging a file dead and removing it.

    A heartbeat changes the mtime: a lock refreshed since it was judged is judged again.
    """
    return holder.token, holder.inode, holder.heartbeat_at


def read_holder(lock_path: Path) -> LockHolder | None:
    """The current holder, or None if there is no lock file. Unreadable content gives pid -1."""
    try:
        with open(lock_path, "rb") as stream:
            info = os.fstat(stream.fileno())
            raw = stream.read(64 * 1024)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, action="read the lock", path=lock_path) from exc
    inode = (info.st_dev, info.st_ino)
    try:
        document = json.loads(raw)
        proc_start = document.get("proc_start")
        holder = LockHolder(
            host=str(document["host"]),
            pid=int(document["pid"]),
            run_id=str(document["run_id"]),
            started_at=float(document["started_at"]),
            token=str(document["token"]),
            heartbeat_at=info.st_mtime,
            inode=inode,
            proc_start=int(proc_start) if proc_start is not None else None,
        )
        if holder.pid <= 0:
            raise ValueError("no process has that pid")
        return holder
    except (ValueError, KeyError, TypeError, AttributeError):
        # Never written by this protocol: an older version's half-written lock, or damage.
        return LockHolder(
            host="?",
            pid=-1,
            run_id="?",
            started_at=info.st_mtime,
            token="",
            heartbeat_at=info.st_mtime,
            inode=inode,
        )


def lock_litter_owner(entry_name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a lock temporary or set-aside lock named ``entry_name``, else None."""
    match = _LITTER_RE.fullmatch(entry_name)
    return (match.group("host"), int(match.group("pid"))) if match else None


@final
class DestinationLock:
    """A held destination lock. Release it (or use it as a context manager) when the run ends."""

    def __init__(self, path: Path, holder: LockHolder) -> None:
        self.path = path
        self.holder = holder
        self._released = False

    def still_ours(self) -> bool:
        """Whether the lock file still carries our token (False once taken over or removed)."""
        current = read_holder(self.path)
        return current is not None and current.token == self.holder.token

    def heartbeat(self) -> None:
        """Prove liveness to other hosts (touch the mtime). Raises DestinationBusyError if the
        lock was taken from us (we were judged stale), so the run stops instead of racing."""
        if self._released:
            raise DestinationBusyError(f"the destination lock {self.path} was already released")
        if not self.still_ours():
            current = read_holder(self.path)
            who = current.describe() if current is not None and current.readable else "nobody"
            raise DestinationBusyError(f"lost the destination lock {self.path}; it is now held by {who}")
        try:
            os.utime(self.path)
        except OSError as exc:
            raise storage_error(exc, action="refresh the lock", path=self.path) from exc

    def release(self) -> None:
        """Remove the lock file if it is still ours. Idempotent."""
        if self._released:
            return
        self._released = True
        if self.still_ours():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise storage_error(exc, action="remove the lock", path=self.path) from exc

    def __enter__(self) -> DestinationLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


class _Verdict(Enum):
    LIVE = "live"  # its owner runs: respect it
    DEAD = "dead"  # proven dead (or litter): remove it
    UNSURE = "unsure"  # unreadable and young: look again shortly


def holder_is_live(holder: LockHolder, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> bool:
    """Whether ``holder`` still counts as running, by the rule the lock itself uses (an unreadable
    holder that is still young counts as live: it may be a run writing its lock right now)."""
    return _judge_lock(holder, stale_after_s=stale_after_s, now=time.time()) is not _Verdict.DEAD


def acquire_destination(
    state_dir: Path,
    *,
    run_id: str,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    lock_name: str = LOCK_NAME,
) -> DestinationLock:
    """Take the lock ``state_dir/lock_name``, taking over a dead one; DestinationBusyError if a
    live run holds it (the message says who, and since when)."""
    _check_lock_name(lock_name)
    lock_path = state_dir / lock_name
    mutex_path = state_dir / f"{lock_name}{_MUTEX_SUFFIX}"
    _remove_dead_litter(state_dir)
    if os.path.lexists(mutex_path):
        _clear_dead_mutex(mutex_path)  # a taker killed after setting the lock aside left only this
    deadline = time.monotonic() + _PATIENCE_S
    pause_s = _FIRST_PAUSE_S
    while True:
        lock = _try_link(lock_path, run_id=run_id)
        if lock is not None:
            return lock
        if time.monotonic() > deadline:
            raise DestinationBusyError(_stuck_message(lock_path, mutex_path))
        holder = read_holder(lock_path)
        if holder is None:
            continue  # released between our link and our read: try again
        verdict = _judge_lock(holder, stale_after_s=stale_after_s, now=time.time())
        if verdict is _Verdict.LIVE:
            raise DestinationBusyError(_busy_message(lock_path, holder, stale_after_s))
        if verdict is _Verdict.DEAD and _take_over(lock_path, mutex_path, holder, run_id=run_id):
            continue  # the dead lock is gone (or something changed): look again at once
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, _LONGEST_PAUSE_S)


def _check_lock_name(lock_name: str) -> None:
    if not _LOCK_NAME_RE.fullmatch(lock_name) or lock_name.endswith((_MUTEX_SUFFIX, ".tmp")):
        raise InputError(
            f"invalid lock name {lock_name!r}: use letters, digits, '.', '_' and '-' (at most 100), "
            f"not ending in {_MUTEX_SUFFIX} or .tmp"
        )


def _new_holder(run_id: str) -> LockHolder:
    """This process as the owner of a file about to be created (inode and mtime not known yet)."""
    now = time.time()
    return LockHolder(
        host=host_name(),
        pid=os.getpid(),
        run_id=run_id,
        started_at=now,
        token=secrets.token_hex(16),
        heartbeat_at=now,
        inode=(0, 0),
        proc_start=_process_start(os.getpid()),
    )


def _owner_document(holder: LockHolder) -> bytes:
    document: dict[str, object] = {
        "host": holder.host,
        "pid": holder.pid,
        "run_id": holder.run_id,
        "started_at": holder.started_at,
        "token": holder.token,
    }
    if holder.proc_start is not None:
        document["proc_start"] = holder.proc_start
    return json.dumps(document).encode("utf-8")


def _try_link(lock_path: Path, *, run_id: str) -> DestinationLock | None:
    owner = _new_holder(run_id)
    created = _create_exclusive(lock_path, _owner_document(owner), point="lock")
    if created is None:
        return None
    inode, mtime = created
    return DestinationLock(lock_path, dataclasses.replace(owner, inode=inode, heartbeat_at=mtime))


def _create_exclusive(target: Path, document: bytes, *, point: str) -> tuple[tuple[int, int], float] | None:
    """Make ``target`` hold ``document`` (complete and fsynced) or return None if it exists.

    Returns the created file's ``(st_dev, st_ino)`` and mtime. ``point`` names the crash points
    ``<point>.before_link`` and ``<point>.after_link``.
    """
    temporary = target.with_name(f".{target.name}~{host_name()}~{os.getpid()}~{secrets.token_hex(6)}.tmp")
    try:
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(document)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                info = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise storage_error(exc, action="write the lock", path=temporary) from exc
        identity = (info.st_dev, info.st_ino)
        crash_point(f"{point}.before_link")
        if not _link_no_replace(temporary, target, identity):
            return None
        crash_point(f"{point}.after_link")
    finally:
        with contextlib.suppress(OSError):  # litter if this fails; removed at a later start-up
            os.unlink(temporary)
    try:
        fsync_directory(target.parent)
    except OSError as exc:
        raise storage_error(exc, action="sync", path=target.parent) from exc
    return identity, info.st_mtime


def _link_no_replace(temporary: Path, target: Path, identity: tuple[int, int]) -> bool:
    """Give ``temporary``'s inode the name ``target`` unless it exists; True if it is now ours."""
    try:
        os.link(temporary, target)
        return True
    except OSError as exc:
        if _is_same_file(target, identity):
            return True  # NFS: the reply was lost, the link was made
        if exc.errno == errno.EEXIST:
            return False
        if exc.errno not in _LINK_UNSUPPORTED:
            raise storage_error(exc, action="create the lock", path=target) from exc
    try:
        rename_no_replace(temporary, target)  # no hard links here: an exclusive rename instead
    except FileExistsError:
        return False
    except OSError as exc:
        raise storage_error(exc, action="create the lock", path=target) from exc
    return True


def _is_same_file(path: Path, identity: tuple[int, int]) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == identity


def _process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc); None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            raw = stream.read(4096)
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner_alive(holder: LockHolder) -> bool:
    """Same host only: the holder's process still runs (and is not a newcomer with its pid)."""
    if not pid_is_alive(holder.pid):
        return False
    if holder.proc_start is None:
        return True
    now_start = _process_start(holder.pid)
    return now_start is None or now_start == holder.proc_start


def _judge_lock(holder: LockHolder, *, stale_after_s: float, now: float) -> _Verdict:
    if not holder.readable:
        return _judge_unreadable(holder, now=now)
    if holder.host == host_name():
        return _Verdict.LIVE if _owner_alive(holder) else _Verdict.DEAD
    return _Verdict.LIVE if now - holder.heartbeat_at < stale_after_s else _Verdict.DEAD


def _judge_mutex(holder: LockHolder, *, now: float) -> _Verdict:
    if not holder.readable:
        return _judge_unreadable(holder, now=now)
    if now - holder.heartbeat_at > _ABANDONED_MUTEX_AGE_S:
        return _Verdict.DEAD  # a takeover takes milliseconds, whoever started it
    if holder.host == host_name() and not _owner_alive(holder):
        return _Verdict.DEAD
    return _Verdict.LIVE


def _judge_unreadable(holder: LockHolder, *, now: float) -> _Verdict:
    return _Verdict.DEAD if now - holder.heartbeat_at > UNREADABLE_LITTER_AGE_S else _Verdict.UNSURE


def _take_over(lock_path: Path, mutex_path: Path, judged: LockHolder, *, run_id: str) -> bool:
    """Remove the dead lock ``judged`` under the takeover mutex. False: the mutex is busy, wait.

    Only the mutex holder removes another run's lock, and only the very file it judged dead
    (same token, inode and heartbeat), so a lock created by the winner of an earlier takeover
    is never removed by a racer that judged the *previous* lock dead. True means "look again
    now": the lock was removed, or it changed, or a dead mutex was cleared.
    """
    created = _create_exclusive(mutex_path, _owner_document(_new_holder(run_id)), point="takeover")
    if created is None:
        return _clear_dead_mutex(mutex_path)
    try:
        current = read_holder(lock_path)
        if current is None or _identity(current) != _identity(judged):
            return True
        crash_point("takeover.before_set_aside")
        _remove_judged(lock_path, judged, point="takeover.after_set_aside")
        return True
    finally:
        mutex = read_holder(mutex_path)
        if mutex is not None and mutex.inode == created[0]:
            with contextlib.suppress(OSError):
                os.unlink(mutex_path)


def _clear_dead_mutex(mutex_path: Path) -> bool:
    """Remove a takeover mutex whose owner is dead; True if the caller may try again at once."""
    holder = read_holder(mutex_path)
    if holder is None:
        return True
    if _judge_mutex(holder, now=time.time()) is not _Verdict.DEAD:
        return False
    _remove_judged(mutex_path, holder, point=None)
    return True


def _remove_judged(path: Path, judged: LockHolder, *, point: str | None) -> None:
    """Remove ``path`` if it is still the file judged dead; put anything else back.

    The file is renamed aside first (atomic), then what was moved is compared with what was
    judged: if its owner released it and a new run linked a new one in the instant between,
    the new one is linked back (``link`` fails only if yet another one appeared meanwhile).
    """
    aside = path.with_name(f".{path.name}.stale~{host_name()}~{os.getpid()}~{secrets.token_hex(6)}.tmp")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(exc, action="take over the stale lock", path=path) from exc
    if point is not None:
        crash_point(point)
    moved = read_holder(aside)
    if moved is not None and _identity(moved) != _identity(judged):
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        os.unlink(aside)


def _remove_dead_litter(state_dir: Path) -> None:
    """Lock temporaries and set-aside files of writers that died on this host (any lock name).

    Such a file is never linked into place by anyone later, so removing it is always safe;
    litter of other hosts is removed by age (:meth:`Destination.cleanup_leftovers`).
    """
    here = host_name()
    try:
        entries = list(os.scandir(state_dir))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(exc, action="list", path=state_dir) from exc
    for entry in entries:
        owner = lock_litter_owner(entry.name)
        if owner is None or owner[0] != here or pid_is_alive(owner[1]):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise storage_error(exc, action="remove", path=entry.path) from exc


def _busy_message(lock_path: Path, holder: LockHolder, stale_after_s: float) -> str:
    heartbeat_age_s = max(0.0, time.time() - holder.heartbeat_at)
    if holder.host == host_name():
        hint = (
            f"if that run is dead, check with `ps -p {holder.pid}`; "
            "a dead pid's lock is taken over automatically"
        )
    else:
        hint = (
            f"if that run is dead, its lock goes stale {stale_after_s:.0f} s after its last heartbeat "
            f"(last one {heartbeat_age_s:.0f} s ago), or remove {lock_path} once you are sure"
        )
    return f"destination is in use: held by {holder.describe()}; {hint}"


def _stuck_message(lock_path: Path, mutex_path: Path) -> str:
    holder = read_holder(lock_path)
    mutex = read_holder(mutex_path)
    if mutex is not None:
        who = mutex.describe() if mutex.readable else "an unreadable file"
        detail = f"the takeover mutex {mutex_path} is held by {who}"
    elif holder is not None and not holder.readable:
        detail = f"{lock_path} is unreadable and its modification time is in the future (clock skew?)"
    else:
        detail = "other runs keep racing for it"
    return (
        f"could not take the destination lock {lock_path} within {_PATIENCE_S:.0f} s: {detail}; "
        "remove it once you are sure no run uses this destination"
    )
