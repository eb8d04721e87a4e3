"""One run per destination: a lock file that works where ``flock`` does not (NFS, Lustre, GPFS).

The lock is ``<state_dir>/lock``, created with ``O_CREAT|O_EXCL`` (atomic on NFSv3+ and Lustre,
unlike ``flock``, which may silently succeed for everyone there; reliability §0.5). It holds JSON
``{"host", "pid", "run_id", "started_at", "token"}`` so a refused run can say who holds it. The
holder calls :meth:`DestinationLock.heartbeat` every ~30 s, which touches the file's mtime.

A lock is *live* when its holder is on this host and its pid exists, or on another host and its
heartbeat is younger than ``stale_after_s`` (default 10 min). A stale lock is taken over safely:
a racer first creates ``lock.takeover`` with ``O_EXCL`` (one racer at a time), judges the lock
stale again, renames it aside (atomic), checks it moved the very file it judged, deletes it and
drops the mutex; then the usual ``O_EXCL`` create decides the single winner. A takeover mutex
older than a minute was left by a crashed process and is removed.

The data protocol does not depend on this lock for correctness (unique staging names,
publish-without-overwrite, reconciliation); the lock prevents wasted double downloads and
interleaved reports. Clock skew between hosts shifts the stale window by the skew. Two narrow
races remain, both needing an unlucky coincidence (a lock released by a holder judged stale at
the very moment of a takeover, or two racers clearing an abandoned takeover mutex at once); the
holder that loses its lock that way learns it at its next :meth:`DestinationLock.heartbeat`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, final

from tcia_fetch.errors import DestinationBusyError
from tcia_fetch.store._fs import fsync_directory, host_name, pid_is_alive, storage_error

__all__ = [
    "DEFAULT_STALE_AFTER_S",
    "LOCK_NAME",
    "DestinationLock",
    "LockHolder",
    "acquire_destination",
    "holder_is_live",
    "read_holder",
]

LOCK_NAME: Final = "lock"
DEFAULT_STALE_AFTER_S: Final = 600.0
_TAKEOVER_ROUNDS: Final = 200
_TAKEOVER_WAIT_S: Final = 0.005
_ABANDONED_MUTEX_AGE_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds (or held) a destination lock, read back from the lock file."""

    host: str
    pid: int
    run_id: str
    started_at: float
    token: str
    heartbeat_at: float
    inode: tuple[int, int]

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.started_at, tz=datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
        return f"pid {self.pid} on host {self.host} (run {self.run_id}) since {since}"


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
        return LockHolder(
            host=str(document["host"]),
            pid=int(document["pid"]),
            run_id=str(document["run_id"]),
            started_at=float(document["started_at"]),
            token=str(document["token"]),
            heartbeat_at=info.st_mtime,
            inode=inode,
        )
    except (ValueError, KeyError, TypeError):
        # Being written right now by a racer, or damaged: only its age can tell.
        return LockHolder(
            host="?",
            pid=-1,
            run_id="?",
            started_at=info.st_mtime,
            token="",
            heartbeat_at=info.st_mtime,
            inode=inode,
        )


def _is_live(holder: LockHolder, *, stale_after_s: float, now: float) -> bool:
    if holder.pid > 0 and holder.host == host_name():
        return pid_is_alive(holder.pid)
    return now - holder.heartbeat_at < stale_after_s


def holder_is_live(holder: LockHolder, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> bool:
    """Whether ``holder`` still counts as running (same rule as the lock itself uses)."""
    return _is_live(holder, stale_after_s=stale_after_s, now=time.time())


@final
class DestinationLock:
    """A held destination lock. Release it (or use it as a context manager) when the run ends."""

    def __init__(self, path: Path, holder: LockHolder) -> None:
        self.path = path
        self.holder = holder
        self._released = False

    def still_ours(self) -> bool:
        current = read_holder(self.path)
        return current is not None and current.token == self.holder.token

    def heartbeat(self) -> None:
        """Prove liveness to other hosts (touch the mtime). Raises DestinationBusyError if the
        lock was taken from us (we were judged stale), so the run stops instead of racing."""
        if self._released:
            raise DestinationBusyError(f"the destination lock {self.path} was already released")
        if not self.still_ours():
            current = read_holder(self.path)
            who = current.describe() if current is not None and current.pid > 0 else "nobody"
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


def acquire_destination(
    state_dir: Path, *, run_id: str, stale_after_s: float = DEFAULT_STALE_AFTER_S, lock_name: str = LOCK_NAME
) -> DestinationLock:
    """Take the destination lock, taking over a stale one; DestinationBusyError if a live run holds it.

    ``lock_name`` picks one of several independent locks in ``state_dir`` (a shard's
    ``lock.shard-3-of-16``, the journal's ``compact.lease``); the default is the whole-destination lock.
    """
    lock_path = state_dir / lock_name
    for _ in range(_TAKEOVER_ROUNDS):
        lock = _try_create(lock_path, run_id=run_id)
        if lock is not None:
            return lock
        holder = read_holder(lock_path)
        if holder is None:
            continue  # released between our create and our read: try again
        if _is_live(holder, stale_after_s=stale_after_s, now=time.time()):
            raise DestinationBusyError(_busy_message(lock_path, holder, stale_after_s))
        if not _take_over(lock_path, stale_after_s=stale_after_s):
            time.sleep(_TAKEOVER_WAIT_S)  # another process is taking over right now; look again
    raise DestinationBusyError(
        f"could not take the destination lock {lock_path}: other runs keep racing for it"
    )


def _try_create(lock_path: Path, *, run_id: str) -> DestinationLock | None:
    token = secrets.token_hex(16)
    started_at = time.time()
    document = {
        "host": host_name(),
        "pid": os.getpid(),
        "run_id": run_id,
        "started_at": started_at,
        "token": token,
    }
    try:
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return None
    except OSError as exc:
        raise storage_error(exc, action="create the lock", path=lock_path) from exc
    try:
        try:
            os.write(fd, json.dumps(document).encode("utf-8"))
            os.fsync(fd)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        fsync_directory(lock_path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        raise storage_error(exc, action="write the lock", path=lock_path) from exc
    holder = LockHolder(
        host=host_name(),
        pid=os.getpid(),
        run_id=run_id,
        started_at=started_at,
        token=token,
        heartbeat_at=info.st_mtime,
        inode=(info.st_dev, info.st_ino),
    )
    return DestinationLock(lock_path, holder)


def _take_over(lock_path: Path, *, stale_after_s: float) -> bool:
    """Remove the lock if it is stale, under the takeover mutex. False: someone else holds the mutex.

    Only the mutex holder removes another run's lock, and only after judging it stale again while
    holding the mutex, so a lock created by the winner of an earlier takeover is never removed by a
    racer that judged the *previous* lock stale. The O_EXCL create that follows picks one winner.
    """
    mutex = lock_path.with_name(f"{lock_path.name}.takeover")
    try:
        os.close(os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except FileExistsError:
        _remove_abandoned_mutex(mutex)
        return False
    except OSError as exc:
        raise storage_error(exc, action="take over the stale lock", path=lock_path) from exc
    try:
        current = read_holder(lock_path)
        if current is None or _is_live(current, stale_after_s=stale_after_s, now=time.time()):
            return True  # gone or live now: the caller looks again
        # Always under the "lock.stale." prefix, which Destination.cleanup_leftovers knows as litter.
        which = "" if lock_path.name == LOCK_NAME else f"{lock_path.name}."
        aside = lock_path.with_name(f"{LOCK_NAME}.stale.{which}{os.getpid()}.{secrets.token_hex(6)}")
        try:
            os.rename(lock_path, aside)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise storage_error(exc, action="take over the stale lock", path=lock_path) from exc
        moved = read_holder(aside)
        if moved is not None and (moved.token, moved.inode, moved.heartbeat_at) != (
            current.token,
            current.inode,
            current.heartbeat_at,
        ):
            # Its owner released it and a new run locked in the instant between our read and our
            # rename: put the new lock back (link fails only if yet another lock appeared).
            with contextlib.suppress(OSError):
                os.link(aside, lock_path)
        with contextlib.suppress(OSError):
            os.unlink(aside)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(mutex)


def _remove_abandoned_mutex(mutex: Path) -> None:
    """A takeover takes milliseconds; a mutex this old was left by a crashed process."""
    try:
        age_s = time.time() - os.stat(mutex).st_mtime
    except OSError:
        return
    if age_s > _ABANDONED_MUTEX_AGE_S:
        with contextlib.suppress(OSError):
            os.unlink(mutex)


def _busy_message(lock_path: Path, holder: LockHolder, stale_after_s: float) -> str:
    if holder.pid <= 0:
        return (
            f"destination is locked by {lock_path}, which another run is writing right now "
            f"(or which is unreadable); it goes stale after {stale_after_s:.0f} s"
        )
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
