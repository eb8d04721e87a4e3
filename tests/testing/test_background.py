"""serve_in_background: a fake NBIA that synchronous code (a notebook, a script) can start and stop."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import pytest

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.testing import Catalog, FakeNBIA, serve_in_background
from tcia_fetch.testing._background import BackgroundServer


def _collections(base_url: str) -> list[str | None]:
    async def main() -> list[str | None]:
        async with NBIAClient(base_url=base_url) as client:
            return list(await client.collections())

    return asyncio.run(main())


def _running(server: BackgroundServer) -> bool:
    """Read ``running`` afresh (so a checker does not carry a narrowed value across ``stop()``)."""
    return server.running


def test_serves_until_stopped_and_stop_is_idempotent() -> None:
    catalog = Catalog.generate(seed=3, collections=2)
    server = serve_in_background(catalog=catalog)
    try:
        assert _running(server)
        assert sorted(c or "" for c in _collections(server.base_url)) == sorted(
            {e.collection for e in catalog.series}
        )
        assert server.server.request_log[-1].endpoint == "getCollectionValues"
        port = urlsplit(server.base_url).port
    finally:
        server.stop()
    server.stop()
    assert not _running(server)
    assert port is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_configured_fake_and_the_with_block() -> None:
    fake = FakeNBIA(Catalog.generate(seed=3, collections=1))
    with serve_in_background(fake) as server:
        assert server.fake is fake
        assert len(_collections(server.base_url)) == 1
    assert not server.running
    with pytest.raises(ValueError, match="either fake or catalog"):
        serve_in_background(fake, catalog=Catalog.generate(seed=3, collections=1))
