"""The integrity oracle: what the fake archive holds, and how much of it a contender really delivered.

The catalog is rebuilt in the harness from the same ``Catalog.generate`` arguments as the server, so
every instance's MD5 and size are known without trusting any contender. Output trees are checked by
content, not by name: every ``.dcm`` file under the output directory is hashed and looked up by MD5
(instance headers carry the SOP Instance UID, so each instance's MD5 is unique). That makes the check
independent of each tool's file names (``00000001.dcm``, ``1-001.dcm``...) and directory layout, while
still requiring the file to sit in a directory named after its series, so a file in the wrong series
is not counted.

A series is *complete* when every one of its instances was found byte-identical; *missing* when none
was; otherwise *partial*. ``corrupt_files`` counts ``.dcm`` files whose MD5 matches no instance.
Verified bytes count only MD5-matching files (each instance once).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tcia_fetch.testing import Catalog

__all__ = ["IntegrityReport", "Oracle", "check_output"]

_READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Expected:
    series_uid: str
    size: int


class Oracle:
    """Expected MD5 → instance, for the series a contender was asked for."""

    def __init__(self, catalog: Catalog, series_uids: Iterable[str]) -> None:
        self.series_uids = list(series_uids)
        self.by_md5: dict[str, _Expected] = {}
        self.instances_per_series: dict[str, int] = {}
        self.dicom_bytes = 0
        for uid in self.series_uids:
            entry = catalog.get(uid)
            if entry is None:
                raise ValueError(f"series {uid} is not in the catalog")
            files = entry.instances()
            self.instances_per_series[uid] = len(files)
            for instance in files:
                self.by_md5[instance.md5] = _Expected(uid, instance.size)
                self.dicom_bytes += instance.size

    @property
    def instance_count(self) -> int:
        """Number of DICOM files expected in total."""
        return len(self.by_md5)


@dataclass(frozen=True)
class IntegrityReport:
    """How many series arrived complete and byte-identical."""

    series_expected: int
    series_complete: int
    series_partial: int
    series_missing: int
    files_expected: int
    files_verified: int
    corrupt_files: int
    misplaced_files: int
    verified_bytes: int

    @property
    def all_complete(self) -> bool:
        """True when every series is complete and nothing unexpected was written."""
        return (
            self.series_complete == self.series_expected
            and self.corrupt_files == 0
            and self.misplaced_files == 0
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (with ``all_complete``)."""
        return {**asdict(self), "all_complete": self.all_complete}


def _dicom_files(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(".dcm"):
                yield Path(directory) / name


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_output(oracle: Oracle, root: Path, *, hash_threads: int = 2) -> IntegrityReport:
    """Hash every ``.dcm`` under ``root`` (hashlib releases the GIL: ``hash_threads`` in parallel)."""
    paths = sorted(_dicom_files(root))
    with ThreadPoolExecutor(max_workers=hash_threads) as pool:
        digests = list(pool.map(_md5_of, paths))
    found: dict[str, set[str]] = {uid: set() for uid in oracle.series_uids}
    corrupt = 0
    misplaced = 0
    verified_bytes = 0
    for path, digest in zip(paths, digests, strict=True):
        expected = oracle.by_md5.get(digest)
        if expected is None:
            corrupt += 1
            continue
        if expected.series_uid not in path.parts:
            misplaced += 1
            continue
        if digest not in found[expected.series_uid]:
            found[expected.series_uid].add(digest)
            verified_bytes += expected.size
    complete = sum(
        1 for uid, digests_found in found.items() if len(digests_found) == oracle.instances_per_series[uid]
    )
    missing = sum(1 for digests_found in found.values() if not digests_found)
    return IntegrityReport(
        series_expected=len(oracle.series_uids),
        series_complete=complete,
        series_partial=len(oracle.series_uids) - complete - missing,
        series_missing=missing,
        files_expected=oracle.instance_count,
        files_verified=sum(len(digests_found) for digests_found in found.values()),
        corrupt_files=corrupt,
        misplaced_files=misplaced,
        verified_bytes=verified_bytes,
    )
