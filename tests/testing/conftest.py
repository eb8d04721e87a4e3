"""Fixtures for the fake-server tests: a small seeded catalog and a way to serve a FakeNBIA."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """Nine-plus series over three collections; some series have acquisition runs."""
    return Catalog.generate(seed=7, collections=3, patients_per_collection=2, series_per_study=2)


@contextlib.asynccontextmanager
async def serving(fake: FakeNBIA) -> AsyncIterator[tuple[RunningServer, aiohttp.ClientSession]]:
    """Serve ``fake`` on loopback and open a client session."""
    async with fake.serve() as server, aiohttp.ClientSession() as session:
        yield server, session


@pytest.fixture
async def served(catalog: Catalog) -> AsyncIterator[tuple[RunningServer, aiohttp.ClientSession]]:
    """The default fake (no faults, no load model) over the shared catalog."""
    async with serving(FakeNBIA(catalog)) as pair:
        yield pair
