"""Fixtures for the API tests: a small deterministic catalog and a fake NBIA server over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.generate(seed=7)


@pytest.fixture
async def fake_server(catalog: Catalog) -> AsyncIterator[RunningServer]:
    restricted = frozenset({catalog.series[-1].uid})
    async with FakeNBIA(catalog, restricted_series=restricted).serve() as server:
        yield server
