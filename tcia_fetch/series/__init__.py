"""One series end to end: stream its zip, extract and verify it inline, recheck it later.

The engine builds a :class:`SeriesExtractor` per download attempt from the server's
:class:`SeriesExpectation`, feeds it the body and gets a :class:`VerifiedSeries` or an
IntegrityError subclass; :func:`recheck_series_dir` re-verifies a published directory.
"""

from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.extract import SeriesExtractor, VerifiedFile, VerifiedSeries
from tcia_fetch.series.limits import ArchiveLimits
from tcia_fetch.series.recheck import recheck_series_dir

__all__ = [
    "ArchiveLimits",
    "SeriesExpectation",
    "SeriesExtractor",
    "VerifiedFile",
    "VerifiedSeries",
    "recheck_series_dir",
]
