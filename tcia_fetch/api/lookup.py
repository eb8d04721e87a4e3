"""Everyday look-ups shared by ``tcia-fetch query`` and the notebook functions.

One place says how a single query runs (a fresh client, retries of what the server calls
temporary) and how ``--where`` filters ``getSeries`` rows, so the command line and
``tf.series(where=...)`` cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.api.models import SeriesRow, ServerRow, rejected_rows
from tcia_fetch.api.where import parse_where
from tcia_fetch.config import ClientSettings
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.retry import RetryPolicy, retry_call
from tcia_fetch.errors import InputError, ResponseFormatError
from tcia_fetch.plan.suggest import EmptyQuery, EmptyQueryExplainer

__all__ = [
    "QUERY_RETRY",
    "SERIES_FILTERS",
    "column_names",
    "filter_series_rows",
    "find_series",
    "run_query",
    "series_columns",
]

#: The server-side filters of ``getSeries``, as ``NBIAClient.series`` names them.
SERIES_FILTERS = (
    "collection",
    "patient_id",
    "study_uid",
    "modality",
    "body_part",
    "manufacturer",
    "manufacturer_model",
    "series_uid",
)

_T = TypeVar("_T")

#: Everyday look-ups retry what the server says is temporary (429 with Retry-After, 5xx, a cut
#: connection) a few times; a rejected query (400) fails at once.
QUERY_RETRY = RetryPolicy(attempts=4, base_s=0.5, cap_s=10.0)


async def run_query(settings: ClientSettings, action: Callable[[NBIAClient], Awaitable[_T]]) -> _T:
    """Run ``action`` with a client for ``settings``, retrying temporary failures."""
    async with NBIAClient(settings) as client:
        return await retry_call(lambda: action(client), policy=QUERY_RETRY, clock=SystemClock())


def column_names(model: type[ServerRow]) -> list[str]:
    """A row model's columns as the server names them."""
    return [field.alias or name for name, field in model.model_fields.items()]


def series_columns() -> list[str]:
    """Every column a ``getSeries`` row may carry, legacy spellings included."""
    return [*column_names(SeriesRow), "CollectionURI", "TimeStamp"]


def filter_series_rows(rows: Sequence[dict[str, object]], where_text: str | None) -> list[dict[str, object]]:
    """Keep the rows ``where_text`` accepts (all rows when None); unknown keys are an InputError."""
    if where_text is None:
        return list(rows)
    keys = set(series_columns())
    for row in rows:
        keys.update(row)
    predicate = parse_where(where_text, known_keys=keys)
    return [row for row in rows if predicate.matches(row)]


async def find_series(
    settings: ClientSettings, filters: Mapping[str, str | None], where_text: str | None, *, origin: str
) -> tuple[list[dict[str, object]], EmptyQuery | None]:
    """``getSeries`` rows (server's keys) kept by ``where_text``; when none, why none.

    The explanation (:mod:`tcia_fetch.plan.suggest`) names the filter that matched nothing and
    the closest valid values, or the ``--where`` that excluded every row the server matched.
    Unknown filter names and ``--where`` syntax errors are InputErrors before any request.
    """
    unknown = sorted(set(filters) - set(SERIES_FILTERS))
    if unknown:
        raise InputError(
            f"unknown filter {unknown[0]!r} (filters: {', '.join(SERIES_FILTERS)})", source=origin
        )
    if where_text is not None:
        parse_where(where_text, known_keys=None)  # syntax errors before any request
    given = {key: value for key, value in filters.items() if value is not None}

    async def action(client: NBIAClient) -> tuple[list[dict[str, object]], EmptyQuery | None]:
        answer = await client.series(**given)
        broken = rejected_rows(answer)
        if broken:  # a listing must not hide a row: the query says what did not fit, as before
            raise ResponseFormatError(f"{len(broken)} getSeries row(s) do not fit: {broken[0].reason}")
        server_rows = [row.server_dict() for row in answer]
        rows = filter_series_rows(server_rows, where_text)
        if rows:
            return rows, None
        explainer = EmptyQueryExplainer(client)
        if server_rows:
            excluded = {f"where {where_text!r}": len(server_rows)}
            finding = await explainer.explain(origin, given, server_rows=len(server_rows), excluded=excluded)
            return rows, finding
        if not given:
            return rows, EmptyQuery(origin, {}, f"{origin}: the server returned no series")
        return rows, await explainer.explain(origin, given)

    return await run_query(settings, action)
