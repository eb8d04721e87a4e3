"""Run a SeriesExtractor over a body inside a staging directory ringed with sentinel files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcia_fetch.errors import TciaFetchError
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.extract import SeriesExtractor, VerifiedSeries
from tests.series.archives import tree

SENTINEL_BYTES = b"sentinel: must never change\n"


@dataclass
class Arena:
    """``root/staging`` is where the extractor may write; everything else under ``root`` is bait."""

    root: Path
    before: dict[str, int] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @classmethod
    def create(cls, root: Path) -> Arena:
        arena = cls(root)
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "passwd").write_bytes(SENTINEL_BYTES)
        (root / "x").write_bytes(SENTINEL_BYTES)
        (root / "LICENSE").write_bytes(SENTINEL_BYTES)
        arena.staging.mkdir()
        arena.before = arena.outside()
        return arena

    def outside(self) -> dict[str, int]:
        return {name: size for name, size in tree(self.root).items() if name.split("/")[0] != "staging"}

    def assert_untouched(self) -> None:
        """Nothing outside the staging directory was created, removed or changed."""
        assert self.outside() == self.before
        for sentinel in (self.root / "etc" / "passwd", self.root / "x", self.root / "LICENSE"):
            assert sentinel.read_bytes() == SENTINEL_BYTES
        for entry in self.staging.rglob("*"):
            assert entry.parent == self.staging and entry.is_file() and not entry.is_symlink()

    def fresh_staging(self) -> Path:
        for entry in self.staging.iterdir():
            entry.unlink()
        return self.staging


def extract(
    body: bytes, expectation: SeriesExpectation, staging: Path, *, chunk_size: int = 1 << 16, **options: Any
) -> VerifiedSeries | TciaFetchError:
    """Feed ``body`` and finish; return the VerifiedSeries or the error raised (the handle is closed)."""
    extractor = SeriesExtractor(expectation, staging, **options)
    try:
        for start in range(0, len(body), chunk_size):
            extractor.feed(body[start : start + chunk_size])
        return extractor.finish()
    except TciaFetchError as exc:
        return exc
    finally:
        extractor.close()
