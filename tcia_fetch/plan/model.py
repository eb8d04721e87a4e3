"""The plan as data: which series a job names, what the server promised for each, and totals.

Pure values, no I/O: the planner fills them in, ``tcia-fetch plan`` prints them, the engine
downloads them and the run report counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tcia_fetch.plan.suggest import EmptyQuery
from tcia_fetch.series.expectation import SeriesExpectation

__all__ = ["CollectionTotals", "PlanProblem", "PlanSummary", "PlannedSeries"]


@dataclass(frozen=True, slots=True)
class PlannedSeries:
    """One series to fetch, with the server's own figures and metadata row.

    ``metadata`` is the server's row keyed exactly as NBIA names its columns (``Collection``,
    ``PatientID``, ...); layout templates and metadata.csv read it. ``origin`` says why the
    series is in the job (``query[0]``, ``lists/a.tcia:14``), for reports.
    """

    series_uid: str
    expectation: SeriesExpectation
    metadata: Mapping[str, object]
    origin: str

    @property
    def collection(self) -> str | None:
        """The series' collection, which also picks the host (NLST lives on its own server)."""
        value = self.metadata.get("Collection")
        return str(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``tcia-fetch plan --json``."""
        return {
            "SeriesInstanceUID": self.series_uid,
            "Collection": self.collection,
            "ImageCount": self.expectation.instance_count,
            "TotalSizeInBytes": self.expectation.total_bytes,
            "origin": self.origin,
        }


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """A series the job names that cannot be planned, and why (reported, never dropped)."""

    series_uid: str
    reason: str
    reference: str
    origin: str

    def as_dict(self) -> dict[str, str]:
        """The report's failure shape."""
        return {
            "SeriesInstanceUID": self.series_uid,
            "reason": self.reason,
            "reference": self.reference,
            "origin": self.origin,
        }


@dataclass(slots=True)
class CollectionTotals:
    """Running totals for one collection."""

    series: int = 0
    instances: int = 0
    total_bytes: int = 0


@dataclass(slots=True)
class PlanSummary:
    """Totals over a plan, per collection and overall. Mutable: the planner adds as it goes."""

    collections: dict[str, CollectionTotals] = field(default_factory=dict)
    problems: list[PlanProblem] = field(default_factory=list)
    query_errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    #: Queries that matched no series, each with the filter to blame and the closest values.
    empty_queries: list[EmptyQuery] = field(default_factory=list)

    def add(self, item: PlannedSeries) -> None:
        """Count one planned series."""
        totals = self.collections.setdefault(item.collection or "(unknown)", CollectionTotals())
        totals.series += 1
        totals.instances += item.expectation.instance_count
        totals.total_bytes += item.expectation.total_bytes

    def extend(self, items: Iterable[PlannedSeries]) -> None:
        """Count several planned series."""
        for item in items:
            self.add(item)

    @property
    def series(self) -> int:
        """Number of planned series."""
        return sum(t.series for t in self.collections.values())

    @property
    def instances(self) -> int:
        """Number of DICOM instances the plan expects."""
        return sum(t.instances for t in self.collections.values())

    @property
    def total_bytes(self) -> int:
        """DICOM bytes the plan expects (the sum of ``TotalSizeInBytes``)."""
        return sum(t.total_bytes for t in self.collections.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``tcia-fetch plan --json`` and the run report."""
        return {
            "series": self.series,
            "instances": self.instances,
            "total_bytes": self.total_bytes,
            "duplicates": self.duplicates,
            "collections": {
                name: {"series": t.series, "instances": t.instances, "total_bytes": t.total_bytes}
                for name, t in sorted(self.collections.items())
            },
            "problems": [p.as_dict() for p in self.problems],
            "query_errors": list(self.query_errors),
            "empty_queries": [finding.as_dict() for finding in self.empty_queries],
        }


def frozen_row(row: Mapping[str, object]) -> Mapping[str, object]:
    """A read-only view of a server row, so planned metadata cannot be changed by accident."""
    return MappingProxyType(dict(row))
