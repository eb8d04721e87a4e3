"""An oracle independent of the engine: what a destination must look like after a run.

It reads only the fake server's catalog (ground truth) and the files on disk, never the
engine's own verdicts, so a bug that marks a bad series done is caught here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tcia_fetch.testing import Catalog

STATE_DIR = ".tcia-fetch"


def published_dirs(out: Path) -> dict[str, Path]:
    """Map series UID → published directory, found by walking the tree (classic layout: last part)."""
    found: dict[str, Path] = {}
    for path in out.rglob("*"):
        if STATE_DIR in path.relative_to(out).parts or not path.is_dir():
            continue
        if any(child.is_file() and child.suffix == ".dcm" for child in path.iterdir()):
            found[path.name] = path
    return found


def md5_set(directory: Path) -> set[str]:
    return {
        hashlib.md5(path.read_bytes()).hexdigest()
        for path in directory.iterdir()
        if path.is_file() and path.suffix == ".dcm"
    }


def assert_destination(out: Path, catalog: Catalog, *, done: Iterable[str], absent: Iterable[str]) -> None:
    """Every ``done`` series is on disk byte-equal to the server's; every ``absent`` one is nowhere."""
    dirs = published_dirs(out)
    for uid in done:
        entry = catalog.get(uid)
        assert entry is not None
        assert uid in dirs, f"{uid} not published"
        assert md5_set(dirs[uid]) == {f.md5 for f in entry.instance_files()}, (
            f"{uid} differs from the server's"
        )
        assert len(list(dirs[uid].glob("*.dcm"))) == entry.instance_count
    for uid in absent:
        leaks = [p for p in out.rglob(f"*{uid}*") if STATE_DIR not in p.relative_to(out).parts]
        assert not leaks, f"{uid} left {leaks}"
    staging = out / STATE_DIR / "staging"
    leftovers = list(staging.iterdir()) if staging.exists() else []
    assert not leftovers, f"staging not cleaned: {leftovers}"
    assert not [p for p in out.rglob("*.part")], "partial files left"
