"""The destination directory: private staging, atomic publish, repair swaps and leftovers.

A series is never visible under its final name until it is complete and verified (reliability
§0.1, §4.7). The engine asks for a private staging directory, the extractor writes verified
files into it, and :meth:`Destination.publish` moves the whole directory into place with one
``rename`` on the same filesystem. Layout under the root::

    <root>/
    ├── <layout path of a published series>/...
    └── .tcia-fetch/
        ├── staging/<uid>~<host>~<pid>~<nonce>/    one per series being fetched (mode 0700)
        └── trash/<uid>~<host>~<pid>~<nonce>/      an old tree being replaced by a repair

The names of staging and trash entries encode who made them, so a later run can tell a dead
run's leftovers (removed) from a live run's work (left alone).

Security (rows E10, E11): parent directories are created one component at a time with ``lstat``
checks, so a symlink planted anywhere in the chain (``dest/COLL/PAT -> /home/victim``) is refused
rather than followed; an existing final path is never overwritten.

All methods are synchronous and may block on the filesystem; the engine calls them through
``anyio.to_thread.run_sync``. OS errors come out as DiskFullError (ENOSPC, EDQUOT) or
DestinationError (EROFS, EACCES, EPERM, ESTALE, ...), with the path and the errno text.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Final, final

from tcia_fetch._crashpoint import crash_point
from tcia_fetch.errors import DestinationError, FinalPathExistsError
from tcia_fetch.store._fs import (
    DirectorySyncs,
    fsync_directory,
    host_name,
    pid_is_alive,
    rename_no_replace,
    storage_error,
)
from tcia_fetch.store.atomic import temporary_owner_pid

__all__ = [
    "STATE_DIR_NAME",
    "Destination",
    "FinalPathExistsError",
    "LeftoverOwner",
    "default_live_owner",
    "leftover_stem",
    "parse_owner",
]

STATE_DIR_NAME: Final = ".tcia-fetch"
_OWNER_SEPARATOR: Final = "~"
_LEFTOVER_MAX_AGE_S: Final = 24 * 3600.0
_SAFE_UID = re.compile(r"[^0-9A-Za-z.]")


LeftoverOwner = tuple[str, int]


def parse_owner(entry_name: str) -> LeftoverOwner | None:
    """``(host, pid)`` from a staging or trash entry name, or None if it is not one of ours."""
    parts = entry_name.rsplit(_OWNER_SEPARATOR, 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def default_live_owner(host: str, pid: int) -> bool:
    """Same host: is the pid alive? Another host: assume alive (only age can prove it dead)."""
    if host != host_name():
        return True
    return pid_is_alive(pid)


def leftover_stem(directory_name: str) -> str:
    """The part of a staging/trash entry name made from a series directory's name (before ``~``)."""
    return _SAFE_UID.sub("_", directory_name)[:64] or "series"


def _owner_prefix(series_uid: str) -> str:
    safe = _SAFE_UID.sub("_", series_uid)[:64] or "series"
    return f"{safe}{_OWNER_SEPARATOR}{host_name()}{_OWNER_SEPARATOR}{os.getpid()}{_OWNER_SEPARATOR}"


@final
class Destination:
    """One destination root. Call :meth:`prepare` once before anything else."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.state_dir = self.root / STATE_DIR_NAME
        self.staging_dir = self.state_dir / "staging"
        self.trash_dir = self.state_dir / "trash"
        self._published_mode = 0o755

    # --- setup -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the state directories and prove the destination is writable (row D5).

        Refuses a root that is a file, a state directory that is a symlink, and a read-only or
        unwritable destination (DestinationError), and a full one (DiskFullError), before any
        network traffic.
        """
        try:
            root_stat = os.stat(self.root)
        except FileNotFoundError:
            root_stat = None
        except OSError as exc:
            raise storage_error(exc, action="use destination", path=self.root) from exc
        if root_stat is not None and not stat.S_ISDIR(root_stat.st_mode):
            raise DestinationError(f"destination {self.root} exists and is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, action="create destination", path=self.root) from exc
        for directory in (self.state_dir, self.staging_dir, self.trash_dir):
            self._make_real_directory(directory)
        self._probe_write()

    @staticmethod
    def _make_real_directory(directory: Path) -> None:
        """Create ``directory`` (or accept it) only if it is a real directory, never a symlink.

        A link planted in a shared data lake could otherwise redirect downloads outside the
        destination (reliability.md E11).
        """
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise storage_error(exc, action="create", path=directory) from exc
        try:
            mode = os.lstat(directory).st_mode
        except OSError as exc:
            raise storage_error(exc, action="inspect", path=directory) from exc
        if stat.S_ISLNK(mode):
            raise DestinationError(
                f"{directory} is a symbolic link; refusing to write through it (a planted link could "
                "redirect downloads outside the destination)"
            )
        if not stat.S_ISDIR(mode):
            raise DestinationError(f"{directory} exists and is not a directory")

    def _probe_write(self) -> None:
        probe = (
            self.state_dir / f".probe{_OWNER_SEPARATOR}{host_name()}{_OWNER_SEPARATOR}{os.getpid()}"
            f"{_OWNER_SEPARATOR}{secrets.token_hex(4)}"
        )
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"tcia-fetch write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
            # mkdir applies the umask (and any default ACL): that is the mode a published series
            # directory should get, not mkdtemp's private 0700.
            os.mkdir(probe, 0o777)
            self._published_mode = stat.S_IMODE(os.lstat(probe).st_mode)
            os.rmdir(probe)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(probe)
            with contextlib.suppress(OSError):
                os.rmdir(probe)
            raise storage_error(exc, action="write to destination", path=self.state_dir) from exc

    def free_bytes(self) -> int:
        """Bytes available to this (unprivileged) user on the destination's filesystem."""
        try:
            result = os.statvfs(self.root)
        except OSError as exc:
            raise storage_error(exc, action="query free space of", path=self.root) from exc
        return result.f_bavail * result.f_frsize

    def final_path(self, relative: PurePosixPath) -> Path:
        """Absolute path of a series directory given its layout path (checked to stay under root)."""
        return self.root.joinpath(*_checked_parts(relative))

    # --- staging ---------------------------------------------------------------------------------

    def new_staging(self, series_uid: str) -> Path:
        """A fresh private (0700) staging directory for one attempt at ``series_uid``.

        Publishing gives it the mode a plain ``mkdir`` gets here (the user's umask), so that
        group members of a shared data lake can read what was published.
        """
        try:
            return Path(tempfile.mkdtemp(prefix=_owner_prefix(series_uid), dir=self.staging_dir))
        except OSError as exc:
            raise storage_error(exc, action="create a staging directory in", path=self.staging_dir) from exc

    def discard(self, staging: Path) -> None:
        """Remove a staging directory and everything in it, complete or half-written. Idempotent."""
        self._require_staging(staging, must_exist=False)
        _remove_tree(staging)

    def _require_staging(self, staging: Path, *, must_exist: bool) -> None:
        staging = Path(os.path.abspath(staging))
        if staging.parent != self.staging_dir:
            raise DestinationError(f"{staging} is not a staging directory of {self.root}")
        try:
            mode = os.lstat(staging).st_mode
        except FileNotFoundError:
            if must_exist:
                raise DestinationError(f"staging directory {staging} does not exist") from None
            return
        except OSError as exc:
            raise storage_error(exc, action="inspect", path=staging) from exc
        if not stat.S_ISDIR(mode):
            raise DestinationError(f"staging entry {staging} is not a directory")

    # --- publishing ------------------------------------------------------------------------------

    def publish(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> Path:
        """Move a complete staging directory to its final place atomically; return the final path.

        Raises FinalPathExistsError if anything exists there already (never overwrites, never
        merges into an existing directory), DestinationError if a parent component is a symlink
        or not a directory.

        With ``deferred``, the fsyncs that make the new mode and the rename durable (the series
        directory and its parent) are left to ``deferred.run()``, which the caller must complete
        before recording the series as done: a batch of series then shares them. The files and
        their directory entries are already durable (the extractor fsynced them), so a crash
        before that run leaves at worst a renamed directory with a ``verified`` record, which
        reconciliation checks like any interrupted publication.
        """
        self._require_staging(staging, must_exist=True)
        parent = self._ensure_parents(relative)
        final_path = parent / _checked_parts(relative)[-1]
        self._refuse_existing(final_path)
        try:
            os.chmod(staging, self._published_mode)
            if deferred is None:
                fsync_directory(staging)
            rename_no_replace(staging, final_path)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FinalPathExistsError(f"{final_path} appeared while publishing; left untouched") from exc
            raise storage_error(exc, action="publish into", path=final_path) from exc
        crash_point("publish.after_rename")
        if deferred is None:
            self._sync(parent)
        else:
            deferred.add(final_path)
            deferred.add(parent)
        return final_path

    def replace(
        self, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> Path:
        """Swap a damaged published series for a freshly verified one (``--repair``).

        The old tree is renamed into the trash first, then the new one is renamed in, then the
        trash is removed. A crash in between leaves the old tree in the trash (cleaned by
        :meth:`cleanup_leftovers`) and no final directory, which reconciliation reports as
        damaged, so the series is fetched again. If no old tree exists this is :meth:`publish`.
        Otherwise ``deferred`` is not used: the old tree leaves the trash only once the new one is
        durably in place.
        """
        self._require_staging(staging, must_exist=True)
        parent = self._ensure_parents(relative)
        final_path = parent / _checked_parts(relative)[-1]
        try:
            old_mode = os.lstat(final_path).st_mode
        except FileNotFoundError:
            return self.publish(staging, relative, deferred=deferred)
        except OSError as exc:
            raise storage_error(exc, action="inspect", path=final_path) from exc
        if not stat.S_ISDIR(old_mode):
            raise DestinationError(f"{final_path} is a symlink or not a directory; refusing to replace it")
        trash_entry = self.trash_dir / (_owner_prefix(final_path.name) + secrets.token_hex(4))
        try:
            os.chmod(staging, self._published_mode)
            fsync_directory(staging)
            os.rename(final_path, trash_entry)
        except OSError as exc:
            raise storage_error(exc, action="move aside", path=final_path) from exc
        try:
            rename_no_replace(staging, final_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rename(trash_entry, final_path)
            raise storage_error(exc, action="publish into", path=final_path) from exc
        self._sync(parent)
        _remove_tree(trash_entry)
        return final_path

    def _ensure_parents(self, relative: PurePosixPath) -> Path:
        """Create the parents of ``relative`` under root, one component at a time, never via a symlink."""
        current = self.root
        for component in _checked_parts(relative)[:-1]:
            current = current / component
            self._make_real_directory(current)
        return current

    @staticmethod
    def _refuse_existing(final_path: Path) -> None:
        try:
            os.lstat(final_path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error(exc, action="inspect", path=final_path) from exc
        raise FinalPathExistsError(
            f"{final_path} already exists; tcia-fetch never overwrites or merges into an existing "
            "directory (move it away, or use --repair for a series this destination recorded)"
        )

    @staticmethod
    def _sync(directory: Path) -> None:
        try:
            fsync_directory(directory)
        except OSError as exc:
            raise storage_error(exc, action="sync", path=directory) from exc

    # --- leftovers -------------------------------------------------------------------------------

    def cleanup_leftovers(
        self,
        *,
        live_owner: Callable[[str, int], bool] = default_live_owner,
        max_age_s: float | None = _LEFTOVER_MAX_AGE_S,
    ) -> int:
        """Remove staging and trash entries left by dead runs; return how many were removed.

        An entry is removed when ``live_owner(host, pid)`` says its owner is gone, or when it is
        older than ``max_age_s`` (None: never by age), or when its name is not one of ours and it
        is older than ``max_age_s``. Entries of live owners are left alone (row D10). Crash
        litter in the state directory (write probes, atomic-write temporaries, set-aside locks)
        older than ``max_age_s`` is removed too.
        """
        removed = 0
        now = time.time()
        for directory in (self.staging_dir, self.trash_dir):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(exc, action="list", path=directory) from exc
            for entry in entries:
                owner = parse_owner(entry.name)
                try:
                    age_s = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise storage_error(exc, action="inspect", path=entry.path) from exc
                too_old = max_age_s is not None and age_s > max_age_s
                owner_dead = owner is not None and not live_owner(*owner)
                if owner_dead or too_old:
                    _remove_tree(Path(entry.path))
                    removed += 1
        removed += self._remove_dead_temporaries(live_owner)
        if max_age_s is not None:
            removed += self._remove_old_state_litter(now - max_age_s)
        return removed

    def _remove_dead_temporaries(self, live_owner: Callable[[str, int], bool]) -> int:
        """Atomic-write temporaries (metadata.csv, reports, snapshot) of writers killed mid-write.

        Runs at start-up under the destination lock, so no live run of ours is writing them; a
        temporary whose pid is dead on this host is litter (reliability.md I5).
        """
        removed = 0
        here = host_name()
        for directory in (self.root, self.state_dir, self.state_dir / "reports"):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(exc, action="list", path=directory) from exc
            for entry in entries:
                pid = temporary_owner_pid(entry.name)
                if pid is None or live_owner(here, pid):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def _remove_old_state_litter(self, cutoff: float) -> int:
        """Probe files, atomic-write temporaries and set-aside locks left in the state dir by crashes.

        Lock temporaries (``.lock~HOST~PID~NONCE.tmp``, also for the takeover mutex and set-aside
        locks) match the hidden ``.tmp`` rule: ``acquire_destination`` removes those of a dead
        writer on this host at once; those of other hosts go here, by age. ``lock.stale.*`` is
        what older versions set aside.
        """
        removed = 0
        try:
            entries = list(os.scandir(self.state_dir))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise storage_error(exc, action="list", path=self.state_dir) from exc
        for entry in entries:
            litter = entry.name.startswith(".probe") or (
                entry.name.startswith(".") and entry.name.endswith(".tmp")
            )
            litter = litter or entry.name.startswith("lock.stale.")
            if not litter:
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    _remove_tree(Path(entry.path))
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(exc, action="inspect", path=entry.path) from exc
        return removed

    def leftover_entries(self) -> list[Path]:
        """Every staging and trash entry currently present (for reports and tests)."""
        found: list[Path] = []
        for directory in (self.staging_dir, self.trash_dir):
            if directory.is_dir():
                found.extend(sorted(directory.iterdir()))
        return found


def _checked_parts(relative: PurePosixPath) -> tuple[str, ...]:
    """The components of a layout path, refusing anything that could leave the root."""
    if relative.is_absolute():
        raise DestinationError(f"series path {relative} must be relative to the destination")
    parts = relative.parts
    if not parts:
        raise DestinationError("series path is empty")
    for part in parts:
        if part in {"", ".", ".."} or "/" in part or "\x00" in part or part == STATE_DIR_NAME:
            raise DestinationError(f"series path {relative} has an unsafe component {part!r}")
    return parts


def _remove_tree(path: Path) -> None:
    """Remove a file or directory tree without following symlinks; missing is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(exc, action="inspect", path=path) from exc
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(exc, action="remove", path=path) from exc
