"""Everyday look-ups shared by ``tcia-fetch query`` and the notebook functions.

One place says how a single query runs (a fresh client, retries of what the server calls
temporary) and how ``--where`` filters ``getSeries`` rows, so the command line and
``tf.series(where=...)`` cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.api.models import SeriesRow, ServerRow
from tcia_fetch.api.where import parse_where
from tcia_fetch.config import ClientSettings
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.retry import RetryPolicy, retry_call

__all__ = ["QUERY_RETRY", "column_names", "filter_series_rows", "run_query", "series_columns"]

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
