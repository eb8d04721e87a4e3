"""Never a silent empty result: say which filter matched nothing, and what was probably meant.

A query that matches nothing is almost always a typo (``HNSCCC``) or a filter the collection
cannot satisfy (a modality it lacks). When a query comes back empty, the filters are checked
one by one, each against the server's own value list scoped by the filters already found good:
``collection`` against ``getCollectionValues``, ``patient_id`` against ``getPatient``,
``modality`` against ``getModalityValues(Collection=...)``, ``body_part`` against
``getBodyPartValues(Collection, Modality)``, ``manufacturer`` against ``getManufacturerValues``.
The first filter whose value is absent is the culprit; :mod:`difflib` proposes the closest
valid values. Values are compared case-insensitively, since the server matches them so.

Value lists are fetched only for a query that came back empty, and only the lists needed: the
check stops at the first culprit. The logic here is pure (:func:`find_culprit`,
:func:`closest`, :func:`client_side_note`); :class:`EmptyQueryExplainer` is the thin async part
that fetches the lists (cached per run) and never fails the caller: a list it cannot fetch
just means no suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio

from tcia_fetch.errors import TciaFetchError
from tcia_fetch.job.models import SeriesQuery

__all__ = [
    "CHECK_ORDER",
    "EmptyQuery",
    "EmptyQueryExplainer",
    "ExclusionTally",
    "ValueSource",
    "client_exclusions",
    "closest",
    "combination_count",
    "describe_filters",
    "find_culprit",
    "unmatched_tables",
]

#: Filters that can be checked against a server value list, in the order they are checked
#: (a filter's list is scoped by the filters before it that the list endpoint accepts).
CHECK_ORDER = ("collection", "patient_id", "modality", "body_part", "manufacturer")

#: The other server filters: UIDs and model names have no value list to compare with.
UNCHECKED = ("study_uid", "manufacturer_model", "series_uid")

#: Which earlier (already checked) filters scope each filter's value list; only filters the list
#: endpoint accepts, and only earlier ones, so a wrong later filter never blames an earlier one.
_SCOPES: dict[str, tuple[str, ...]] = {
    "collection": (),
    "patient_id": ("collection",),
    "modality": ("collection",),
    "body_part": ("collection", "modality"),
    "manufacturer": ("collection", "modality", "body_part"),
}

_SHOWN_VALUES = 12


@runtime_checkable
class ValueSource(Protocol):
    """The value-list calls of ``NBIAClient`` the explainer uses."""

    async def collections(self) -> Sequence[str | None]: ...

    async def modalities(
        self, *, collection: str | None = None, body_part: str | None = None
    ) -> Sequence[str | None]: ...

    async def body_parts(
        self, *, collection: str | None = None, modality: str | None = None
    ) -> Sequence[str | None]: ...

    async def manufacturers(
        self, *, collection: str | None = None, modality: str | None = None, body_part: str | None = None
    ) -> Sequence[str | None]: ...

    async def patients(
        self, *, collection: str | None = None, patient_id: str | None = None
    ) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class EmptyQuery:
    """A query that matched no series, the filter to blame (if found) and the closest values.

    ``origin`` says which query (``query[0]``, ``tf.series``); ``table``/``combinations`` tie a
    ``[[query]]`` combination to its table so a wholly empty table can be told from one empty
    combination of many. ``culprit`` is the filter name (``collection``), ``value`` its value,
    ``suggestions`` the closest valid values, ``available`` a few valid values when none is
    close. ``server_rows`` > 0 means the server matched and the client-side filters kept none.
    """

    origin: str
    filters: Mapping[str, str]
    message: str
    culprit: str | None = None
    value: str | None = None
    suggestions: tuple[str, ...] = ()
    available: tuple[str, ...] = ()
    server_rows: int = 0
    table: int | None = None
    combinations: int = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``plan --json`` and the run report's ``plan.empty_queries``."""
        return {
            "origin": self.origin,
            "filters": dict(self.filters),
            "message": self.message,
            "culprit": self.culprit,
            "value": self.value,
            "suggestions": list(self.suggestions),
            "server_rows": self.server_rows,
        }


@dataclass(frozen=True, slots=True)
class Culprit:
    """The first filter whose value is not among the server's values in its scope."""

    name: str
    value: str
    scope: Mapping[str, str]
    suggestions: tuple[str, ...]
    available: tuple[str, ...]


def describe_filters(filters: Mapping[str, str]) -> str:
    """``collection = HNSCC; modality = CT`` (in the server's filter order)."""
    order = (*CHECK_ORDER, *UNCHECKED)
    keys = sorted(filters, key=lambda key: order.index(key) if key in order else len(order))
    return "; ".join(f"{_label(key)} = {filters[key]}" for key in keys)


def _label(key: str) -> str:
    return "model" if key == "manufacturer_model" else key


def closest(value: str, candidates: Sequence[str | None], *, count: int = 3) -> tuple[bool, tuple[str, ...]]:
    """Whether ``value`` is among ``candidates`` (case-insensitively), and the closest others.

    Matching is on upper-cased text with surrounding spaces ignored (the server compares
    ``UPPER(col) = UPPER(:p)`` and some values carry trailing spaces); suggestions are given in
    the server's own spelling.
    """
    folded: dict[str, str] = {}
    for candidate in candidates:
        if candidate is None:
            continue
        folded.setdefault(candidate.strip().upper(), candidate.strip())
    key = value.strip().upper()
    if key in folded:
        return True, ()
    matches = difflib.get_close_matches(key, list(folded), n=count, cutoff=0.6)
    return False, tuple(folded[match] for match in matches)


def find_culprit(
    filters: Mapping[str, str], value_lists: Mapping[str, Sequence[str | None]]
) -> Culprit | None:
    """The first checked filter (in :data:`CHECK_ORDER`) whose value is absent from its list.

    ``value_lists`` maps a filter name to the server's values for it, scoped by the filters
    before it; a filter without a list is skipped (not checked).
    """
    for name in CHECK_ORDER:
        value = filters.get(name)
        values = value_lists.get(name)
        if value is None or values is None:
            continue
        found, suggestions = closest(value, values)
        if found:
            continue
        shown = tuple(sorted({v.strip() for v in values if v is not None and v.strip()}, key=str.upper))
        scope = {key: filters[key] for key in _SCOPES[name] if key in filters}
        return Culprit(name, value, scope, suggestions, () if suggestions else shown[:_SHOWN_VALUES])
    return None


def culprit_message(culprit: Culprit, *, total_available: int | None = None) -> str:
    """``collection 'HNSCCC' matched no series; did you mean 'HNSCC'?``"""
    where = ""
    if culprit.scope:
        where = " with " + ", ".join(f"{_label(k)} {v!r}" for k, v in culprit.scope.items())
        if list(culprit.scope) == ["collection"]:
            where = f" in collection {culprit.scope['collection']!r}"
    text = f"{_label(culprit.name)} {culprit.value!r} matched no series{where}"
    if culprit.suggestions:
        options = " or ".join(repr(s) for s in culprit.suggestions)
        return f"{text}; did you mean {options}?"
    if culprit.available:
        more = ""
        if total_available is not None and total_available > len(culprit.available):
            more = f", ... ({total_available} in all)"
        return f"{text} (valid values: {', '.join(culprit.available)}{more})"
    return f"{text} (the server lists no values for it there)"


def client_side_note(server_rows: int, excluded: Mapping[str, int]) -> str:
    """The server matched but client-side filters kept nothing: say which ones excluded what."""
    parts = ", ".join(f"{name} excluded {count}" for name, count in excluded.items() if count)
    detail = f" ({parts})" if parts else ""
    return f"the server matched {server_rows} series, but the client-side filters kept none{detail}"


def client_exclusions(query: SeriesQuery, rows: Sequence[Any]) -> dict[str, int]:
    """How many server rows each client-side filter of ``query`` rejects on its own."""
    tally = ExclusionTally(query)
    for row in rows:
        tally.add(row)
    return tally.counts


class ExclusionTally:
    """:func:`client_exclusions` one row at a time, for rows that stream past (issue 13)."""

    __slots__ = ("_singles", "counts")

    def __init__(self, query: SeriesQuery) -> None:
        self._singles = {
            name: _only(query, name)
            for name in ("image_count", "series_date", "description")
            if getattr(query, name) is not None
        }
        self.counts = dict.fromkeys(self._singles, 0)

    def add(self, row: Any) -> None:
        """Count one server row against each client-side filter on its own."""
        for name, single in self._singles.items():
            if not single.accepts(row.image_count, row.series_date, row.series_description):
                self.counts[name] += 1


def combination_count(query: SeriesQuery) -> int:
    """How many ``getSeries`` calls ``query`` expands to (without building them)."""
    count = 1
    for name in (*CHECK_ORDER, "study_uid", "manufacturer_model"):
        values = getattr(query, name)
        if values:
            count *= len(values)
    return count


def _only(query: SeriesQuery, name: str) -> SeriesQuery:
    """``query`` with every client-side filter but ``name`` removed (to test one at a time)."""
    cleared = {key: None for key in ("image_count", "series_date", "description") if key != name}
    return query.model_copy(update=cleared)


def unmatched_tables(findings: Sequence[EmptyQuery]) -> list[EmptyQuery]:
    """Findings that make a job a mistake: every combination of their ``[[query]]`` came back empty.

    A ``[[query]]`` whose lists multiply out (collections x modalities) may legitimately have
    empty combinations; only a table that matched nothing at all is treated as an error. One
    finding per such table is returned (the first), plus every finding not tied to a table.
    """
    by_table: dict[int, list[EmptyQuery]] = {}
    loose: list[EmptyQuery] = []
    for finding in findings:
        if finding.table is None:
            loose.append(finding)
        else:
            by_table.setdefault(finding.table, []).append(finding)
    blocking = list(loose)
    for _table, group in sorted(by_table.items()):
        if len({tuple(sorted(f.filters.items())) for f in group}) >= group[0].combinations:
            blocking.append(group[0])
    return blocking


Call = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def _direct(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


@dataclass
class EmptyQueryExplainer:
    """Fetches the value lists an empty query needs (cached per instance) and explains it.

    ``call`` wraps each request (the planner passes its retrying caller). A failed fetch means
    no suggestion for that filter, never an error: the explanation is a courtesy.
    """

    source: object
    call: Call = _direct
    _cache: dict[tuple[str, tuple[tuple[str, str], ...]], list[str | None] | None] = field(
        default_factory=dict
    )
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def explain(
        self,
        origin: str,
        filters: Mapping[str, str],
        *,
        server_rows: int = 0,
        excluded: Mapping[str, int] | None = None,
        table: int | None = None,
        combinations: int = 1,
    ) -> EmptyQuery:
        """One :class:`EmptyQuery` for ``filters`` (client filter names as ``series()`` takes)."""
        shown = describe_filters(filters)
        if server_rows:
            note = client_side_note(server_rows, excluded or {})
            return EmptyQuery(
                origin,
                dict(filters),
                f"{origin} ({shown}): {note}",
                server_rows=server_rows,
                table=table,
                combinations=combinations,
            )
        lists: dict[str, Sequence[str | None]] = {}
        culprit: Culprit | None = None
        total: int | None = None
        for name in CHECK_ORDER:
            if name not in filters:
                continue
            values = await self._values(name, filters)
            if values is None:
                continue
            lists[name] = values
            culprit = find_culprit(filters, lists)
            if culprit is not None:
                total = len({v.strip().upper() for v in values if v is not None and v.strip()})
                break
        if culprit is not None:
            message = culprit_message(culprit, total_available=total)
            return EmptyQuery(
                origin,
                dict(filters),
                f"{origin} ({shown}): {message}",
                culprit=culprit.name,
                value=culprit.value,
                suggestions=culprit.suggestions,
                available=culprit.available,
                table=table,
                combinations=combinations,
            )
        checked = [name for name in CHECK_ORDER if name in lists]
        if checked and all(name in checked for name in filters):
            detail = "each value exists on the server, but no series has them all"
        else:
            detail = "no series has these values"
        return EmptyQuery(
            origin,
            dict(filters),
            f"{origin} ({shown}) matched no series: {detail}",
            table=table,
            combinations=combinations,
        )

    async def _values(self, name: str, filters: Mapping[str, str]) -> list[str | None] | None:
        if not isinstance(self.source, ValueSource):
            return None
        source: ValueSource = self.source
        scope = {key: filters[key] for key in _SCOPES[name] if key in filters}
        key = (name, tuple(sorted((k, v.strip().upper()) for k, v in scope.items())))
        async with self._lock:
            if key in self._cache:
                return self._cache[key]
            fetch = _FETCHERS[name]
            try:
                values: list[str | None] | None = list(await self.call(lambda: fetch(source, scope)))
            except TciaFetchError as exc:
                if exc.fatal:
                    raise
                values = None
            self._cache[key] = values
            return values


async def _patient_ids(source: ValueSource, scope: Mapping[str, str]) -> list[str | None]:
    rows = await source.patients(collection=scope.get("collection"))
    return [getattr(row, "patient_id", None) for row in rows]


async def _collections(source: ValueSource, scope: Mapping[str, str]) -> Sequence[str | None]:
    return await source.collections()


async def _modalities(source: ValueSource, scope: Mapping[str, str]) -> Sequence[str | None]:
    return await source.modalities(collection=scope.get("collection"), body_part=scope.get("body_part"))


async def _body_parts(source: ValueSource, scope: Mapping[str, str]) -> Sequence[str | None]:
    return await source.body_parts(collection=scope.get("collection"), modality=scope.get("modality"))


async def _manufacturers(source: ValueSource, scope: Mapping[str, str]) -> Sequence[str | None]:
    return await source.manufacturers(
        collection=scope.get("collection"), modality=scope.get("modality"), body_part=scope.get("body_part")
    )


_FETCHERS: dict[str, Callable[[ValueSource, Mapping[str, str]], Awaitable[Sequence[Any]]]] = {
    "collection": _collections,
    "patient_id": _patient_ids,
    "modality": _modalities,
    "body_part": _body_parts,
    "manufacturer": _manufacturers,
}
