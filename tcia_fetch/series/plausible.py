"""Bounds on what a server may claim about one series before tcia-fetch believes it.

Every cap the extractor enforces (members, DICOM bytes, the md5 list, the disk space checked
before a series starts) is derived from the server's own ``ImageCount``/``ObjectCount`` and
``FileSize``/``TotalSizeInBytes``. A hostile or broken server that claims 6,000,000 images or an
exabyte would otherwise buy itself caps that protect nothing. Figures past these bounds are
refused as implausible server data: the series fails on its own with the reason, the rest of
the job goes on.

Where the bounds come from (shared/reference/archive-shape.md: IDC's index of 1,044,191 public
series, ``idc-index-data`` 25.0.5, and its 20,000-series sample ``series-mix-sample.csv``):

* instances per series: 99.9th percentile 1,260; the largest in the sample 13,712
  (``ldct_and_projection_data``). :data:`MAX_PLAUSIBLE_INSTANCES` = 250,000 leaves 18x headroom
  over that largest series and 200x over the 99.9th percentile.
* bytes per series: 99.9th percentile 4.6 GB; the largest series in the whole index is
  195,185 MB (a slide-microscopy series, which NBIA does not even serve).
  :data:`MAX_PLAUSIBLE_BYTES` = 4 TiB leaves more than 20x headroom over it.

Both are far beyond anything real and still small enough that the caps derived from them stay
meaningful: 250,000 md5-list rows are at most a few tens of MB, and a 4 TiB claim still has to
pass the free-space check before the first byte is requested.
"""

from __future__ import annotations

from tcia_fetch.errors import ImplausibleFiguresError
from tcia_fetch.series.expectation import SeriesExpectation

__all__ = ["MAX_PLAUSIBLE_BYTES", "MAX_PLAUSIBLE_INSTANCES", "check_plausible", "implausibility"]

MAX_PLAUSIBLE_INSTANCES = 250_000
MAX_PLAUSIBLE_BYTES = 4 << 40


def implausibility(instance_count: int, total_bytes: int) -> str | None:
    """Why the server's figures for one series cannot be true, or None when they may be."""
    if instance_count > MAX_PLAUSIBLE_INSTANCES:
        return (
            f"the server claims {instance_count:,} instances, more than the {MAX_PLAUSIBLE_INSTANCES:,} "
            "any real series comes near (implausible server data)"
        )
    if total_bytes > MAX_PLAUSIBLE_BYTES:
        return (
            f"the server claims {total_bytes:,} bytes, more than the {MAX_PLAUSIBLE_BYTES:,} (4 TiB) "
            "any real series comes near (implausible server data)"
        )
    return None


def check_plausible(expectation: SeriesExpectation) -> None:
    """Raise :class:`ImplausibleFiguresError` when ``expectation`` is beyond belief."""
    reason = implausibility(expectation.instance_count, expectation.total_bytes)
    if reason is not None:
        raise ImplausibleFiguresError(reason, series_uid=expectation.series_uid)
