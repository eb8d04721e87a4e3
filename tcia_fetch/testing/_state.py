"""State shared by the fake server's handlers, and small response helpers (aiohttp side)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from tcia_fetch.testing._auth import TokenStore
from tcia_fetch.testing._catalog import Catalog, SeriesEntry
from tcia_fetch.testing._faults import FaultState
from tcia_fetch.testing._formats import invalid_parameter_text
from tcia_fetch.testing._load import LoadModel, SharedLink, StatsCounter

__all__ = [
    "COMPLETED_KEY",
    "Handler",
    "ServerState",
    "check_allowed",
    "empty_ok",
    "make_handler",
    "text_response",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Set by download handlers: whether the whole body was sent (False after a CUT or a client abort).
COMPLETED_KEY = web.RequestKey("fake_nbia_completed", bool)


@dataclass
class ServerState:
    """Everything a handler needs: the catalog, what is visible, faults, load model, tokens, counters."""

    catalog: Catalog
    faults: FaultState
    load: LoadModel
    restricted: frozenset[str]
    tokens: TokenStore
    stats: StatsCounter = field(default_factory=StatsCounter)
    link: SharedLink = field(init=False)
    chunk_bytes: int = 64 * 1024
    #: False plays a deployment older than 2025-11, whose getImage allow-list lacks IncludeMD5
    #: (reference/nbia-api.md §5.1 marks its production status UNCERTAIN).
    include_md5_supported: bool = True
    _visible: list[SeriesEntry] | None = None

    def __post_init__(self) -> None:
        self.link = SharedLink(self.load.total_bytes_per_s)

    def visible(self) -> Sequence[SeriesEntry]:
        """Public series in catalog order (restricted ones are absent from every query)."""
        if not self.restricted:
            return self.catalog.series  # no copy: a lazy catalog stays lazy
        if self._visible is None:
            self._visible = [entry for entry in self.catalog.series if entry.uid not in self.restricted]
        return self._visible

    def visible_series(self, uid: str | None) -> SeriesEntry | None:
        """A public series by UID (the server upper-cases both sides; UIDs are digits and dots)."""
        if not uid:
            return None
        entry = self.catalog.get(uid.strip().upper())
        if entry is None or entry.uid in self.restricted:
            return None
        return entry

    async def query_delay(self, extra_s: float = 0.0) -> None:
        """The load model's query latency plus any SLOW_QUERY delay."""
        total = self.load.query_delay_s + extra_s
        if total > 0:
            await asyncio.sleep(total)


def text_response(status: int, text: str, content_type: str = "text/plain") -> web.Response:
    """A plain-text body with the given type (NBIA's error texts)."""
    return web.Response(status=status, body=text.encode("utf-8"), content_type=content_type)


def empty_ok() -> web.Response:
    """``Response.ok().build()``: 200 with an empty body and no content type to speak of."""
    return web.Response(status=200)


def check_allowed(request: web.Request, allowed: Sequence[str] | None) -> web.Response | None:
    """400 for the first query parameter outside the allow-list (None = accept anything)."""
    if allowed is None:
        return None
    for name in request.query:
        if name not in allowed:
            return text_response(400, invalid_parameter_text(name, allowed))
    return None


def make_handler(
    function: Callable[[ServerState, int, web.Request], Awaitable[web.StreamResponse]],
    state: ServerState,
    generation: int,
) -> Handler:
    """Bind a handler function to the state and an API generation (1, 2 or 4)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await function(state, generation, request)

    return handler
