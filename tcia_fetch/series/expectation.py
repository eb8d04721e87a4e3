"""What the server promised about one series, the yardstick every download is checked against."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SeriesExpectation"]


@dataclass(frozen=True, slots=True)
class SeriesExpectation:
    """The server's own figures for one series.

    ``instance_count`` is ``ObjectCount``/``ImageCount`` and ``total_bytes`` is
    ``TotalSizeInBytes``/``FileSize``: the sum of the stored DICOM file sizes, not the zip size.
    """

    series_uid: str
    instance_count: int
    total_bytes: int

    def __post_init__(self) -> None:
        if self.instance_count < 0 or self.total_bytes < 0:
            raise ValueError(f"negative expectation for series {self.series_uid}")
