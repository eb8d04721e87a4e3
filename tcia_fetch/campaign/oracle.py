"""The campaign's judge: what a destination must look like, decided from ground truth alone.

It reads the fake server's catalog (every expected byte is known from its seed), the files on
disk and, read-only, the journal; never the engine's own report of what it verified. So a bug
that marks a wrong series ``done`` shows up here as data lost (reliability.md §5, D-1...D-5):

* **wrong_done** (D-1): the journal says done, but the published bytes differ from the server's
  (or the series is not where the journal says);
* **unverified_published** (I1): a series directory at a final path that is not byte-exact;
* **lost** (D-2): a planned series neither done nor reported failed;
* **altered** (D-3): a series published earlier whose files later changed (bytes or inode);
* **outside** (D-4): files created next to the destination, or symlinks inside it;
* **leftovers** (D-5): temporary, partial, staging or trash entries after a clean finish.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tcia_fetch.store.journal import Journal
from tcia_fetch.testing import Catalog

__all__ = [
    "STATE_DIR_NAME",
    "DataLoss",
    "FileStamp",
    "journal_statuses",
    "judge_destination",
    "leftover_paths",
    "outside_paths",
    "published_series",
    "series_stamps",
    "truth_problem",
]

STATE_DIR_NAME = ".tcia-fetch"
_TEMP_SUFFIXES = (".part", ".tmp")


@dataclass(frozen=True, slots=True)
class FileStamp:
    """Identity and content of one published file: a change in any field is an alteration."""

    inode: int
    size: int
    mtime_ns: int
    md5: str


@dataclass
class DataLoss:
    """Every kind of data loss the campaign counts; each list holds series UIDs or paths."""

    wrong_done: list[str] = field(default_factory=list)
    unverified_published: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    def add(self, other: DataLoss) -> None:
        """Accumulate another check's findings (duplicates kept out)."""
        for name in self.counts():
            mine: list[str] = getattr(self, name)
            mine.extend(item for item in getattr(other, name) if item not in mine)

    def counts(self) -> dict[str, int]:
        """Figure name → count, in report order."""
        return {
            "wrong_done": len(self.wrong_done),
            "unverified_published": len(self.unverified_published),
            "lost": len(self.lost),
            "altered": len(self.altered),
            "outside": len(self.outside),
            "leftovers": len(self.leftovers),
        }

    @property
    def total(self) -> int:
        """The sum of every figure: 0 is the only passing value."""
        return sum(self.counts().values())


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def published_series(out: Path) -> dict[str, Path]:
    """Series UID → published directory (any directory outside the state dir holding ``.dcm`` files).

    The classic layout names the series directory after its UID; the oracle relies on nothing
    else, so a series published under a wrong name counts as missing, not as verified.
    """
    found: dict[str, Path] = {}
    if not out.exists():
        return found
    for directory, subdirs, files in os.walk(out):
        here = Path(directory)
        if here == out and STATE_DIR_NAME in subdirs:
            subdirs.remove(STATE_DIR_NAME)
        if any(name.endswith(".dcm") for name in files):
            found[here.name] = here
    return found


def series_stamps(directory: Path) -> dict[str, FileStamp]:
    """File name → :class:`FileStamp` of every file in one published series directory."""
    stamps: dict[str, FileStamp] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            info = path.stat()
            stamps[path.name] = FileStamp(info.st_ino, info.st_size, info.st_mtime_ns, _md5(path))
    return stamps


def truth_problem(catalog: Catalog, uid: str, directory: Path) -> str | None:
    """Why ``directory`` is not exactly the server's series ``uid``; None when it is."""
    entry = catalog.get(uid)
    if entry is None:
        return f"{uid} is not a series of the server"
    expected = sorted(item.md5 for item in entry.instance_files())
    dicoms = sorted(path for path in directory.iterdir() if path.suffix == ".dcm")
    if len(dicoms) != entry.instance_count:
        return f"{uid}: {len(dicoms)} files on disk, the server has {entry.instance_count}"
    actual = sorted(_md5(path) for path in dicoms)
    if actual != expected:
        return f"{uid}: file contents differ from the server's"
    return None


def journal_statuses(out: Path) -> dict[str, str]:
    """Series UID → latest journal status (done, verified, failed...), read without writing."""
    state_dir = out / STATE_DIR_NAME
    if not state_dir.exists():
        return {}
    journal = Journal.open(state_dir, run_id="campaign-oracle")
    try:
        return {uid: record.status for uid, record in journal.latest().items()}
    finally:
        journal.close()


def leftover_paths(out: Path) -> list[str]:
    """Temporary or partial files anywhere, plus staging and trash entries (after a clean finish)."""
    found: list[str] = []
    for directory, _, files in os.walk(out):
        for name in files:
            if name.endswith(_TEMP_SUFFIXES) or ".incomplete" in name:
                found.append(str(Path(directory, name)))
    for holder in ("staging", "trash"):
        place = out / STATE_DIR_NAME / holder
        if place.exists():
            found.extend(str(path) for path in place.iterdir())
    return found


def outside_paths(sandbox: Path, out: Path, expected: Iterable[Path]) -> list[str]:
    """Anything in ``sandbox`` but outside ``out`` that the campaign did not put there, plus symlinks.

    ``sandbox`` is the directory the campaign created around the destination; ``expected``
    are its own files there (job file, server port file, logs). Symlinks anywhere under
    ``out`` also count: the program must never create one.
    """
    allowed = {path.resolve() for path in expected} | {out.resolve()}
    strays: list[str] = []
    for directory, subdirs, files in os.walk(sandbox):
        here = Path(directory)
        for name in [*subdirs, *files]:
            path = here / name
            if path.is_symlink():
                strays.append(f"symlink {path}")
                continue
            resolved = path.resolve()
            if resolved == out.resolve() or out.resolve() in resolved.parents:
                continue
            if resolved not in allowed and not any(item in resolved.parents for item in allowed):
                strays.append(str(path))
        subdirs[:] = [name for name in subdirs if (here / name).resolve() != out.resolve()]
    for directory, subdirs, files in os.walk(out):
        for name in [*subdirs, *files]:
            path = Path(directory, name)
            if path.is_symlink():
                strays.append(f"symlink {path}")
    return strays


def judge_destination(
    out: Path,
    catalog: Catalog,
    *,
    planned: Iterable[str],
    reported: Iterable[str],
    earlier: Mapping[str, Mapping[str, FileStamp]] | None = None,
    clean_finish: bool = True,
) -> DataLoss:
    """Check D-1, I1, D-2, D-3 and (after a clean finish) D-5 on one destination.

    ``planned`` are the series the job names; ``reported`` those the run's report lists as
    failed; ``earlier`` the stamps of series published before (from :func:`series_stamps`).
    """
    loss = DataLoss()
    statuses = journal_statuses(out)
    published = published_series(out)
    for uid, directory in published.items():
        problem = truth_problem(catalog, uid, directory)
        if problem is not None:
            loss.unverified_published.append(problem)
            if statuses.get(uid) == "done":
                loss.wrong_done.append(problem)
    for uid, status in statuses.items():
        if status == "done" and uid not in published:
            loss.wrong_done.append(f"{uid}: journal says done, nothing published")
    reported_set = set(reported)
    if clean_finish:
        for uid in planned:
            if statuses.get(uid) != "done" and uid not in reported_set and statuses.get(uid) != "failed":
                loss.lost.append(f"{uid}: neither done nor reported (journal: {statuses.get(uid)})")
        loss.leftovers.extend(leftover_paths(out))
    for uid, stamps in (earlier or {}).items():
        place = published.get(uid)
        if place is None:
            loss.altered.append(f"{uid}: published earlier, now gone")
            continue
        now = series_stamps(place)
        if now != stamps:
            loss.altered.append(f"{uid}: files changed after publication")
    return loss
