"""Check a series directory on disk against the files it was verified with.

Used by ``tcia-fetch verify`` and by resume cross-checks: a directory that merely exists proves
nothing, so every recorded file must be there as a regular file (never a symlink) with its
recorded size, and, when asked, its recorded MD5; nothing else may be in the directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from tcia_fetch.series.extract import VerifiedFile

__all__ = ["HASH_READ_BYTES", "recheck_series_dir"]

#: Read size when re-hashing; large reads keep the cost at the disk's speed.
HASH_READ_BYTES = 1 << 20


def recheck_series_dir(path: Path, files: Sequence[VerifiedFile], *, check_md5: bool) -> list[str]:
    """Problems found in ``path`` (missing, extra, wrong size or MD5, not a regular file); [] if none.

    Never follows a symlink, neither for the directory nor for its entries. Each problem is one
    line naming the file and the numbers.
    """
    try:
        directory_mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return [f"series directory {str(path)!r} is missing"]
    except OSError as exc:
        return [f"cannot inspect series directory {str(path)!r}: {exc.strerror or exc}"]
    if stat.S_ISLNK(directory_mode):
        return [f"series directory {str(path)!r} is a symlink"]
    if not stat.S_ISDIR(directory_mode):
        return [f"series directory {str(path)!r} is not a directory"]
    try:
        present = {entry.name: entry for entry in os.scandir(path)}
    except OSError as exc:
        return [f"cannot list series directory {str(path)!r}: {exc.strerror or exc}"]
    problems: list[str] = []
    expected_names: set[str] = set()
    for verified in files:
        expected_names.add(verified.name)
        entry = present.get(verified.name)
        if entry is None:
            problems.append(f"{verified.name}: missing")
            continue
        problem = _check_file(Path(entry.path), verified, check_md5=check_md5)
        if problem is not None:
            problems.append(f"{verified.name}: {problem}")
    problems.extend(
        f"{name}: extra file, not part of the verified series"
        for name in sorted(set(present) - expected_names)
    )
    return problems


def _check_file(file_path: Path, verified: VerifiedFile, *, check_md5: bool) -> str | None:
    try:
        info = os.lstat(file_path)
    except OSError as exc:
        return f"cannot inspect: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink, not a regular file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_size != verified.size:
        return f"size is {info.st_size} bytes, expected {verified.size}"
    if not check_md5:
        return None
    try:
        digest = _md5_of(file_path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if digest != verified.md5.lower():
        return f"MD5 is {digest}, expected {verified.md5}"
    return None


def _md5_of(file_path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    descriptor = os.open(file_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(descriptor, HASH_READ_BYTES):
            digest.update(chunk)
    finally:
        os.close(descriptor)
    return digest.hexdigest()
