"""Small helpers shared by the fake-server tests."""

from __future__ import annotations

import io
import zipfile

import aiohttp

from tcia_fetch.testing import Catalog, RunningServer, SeriesEntry


async def fetch(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, dict[str, str], bytes]:
    """GET and return status, headers (case-preserved dict) and the whole body."""
    async with session.get(url, params=params) as response:
        body = await response.read()
        return response.status, dict(response.headers), body


async def fetch_zip(
    session: aiohttp.ClientSession, server: RunningServer, endpoint: str, **params: str
) -> zipfile.ZipFile:
    """Download a zip endpoint and open it, asserting a 200."""
    status, _, body = await fetch(session, server.base_url + endpoint, **params)
    assert status == 200, body[:200]
    return zipfile.ZipFile(io.BytesIO(body))


def with_runs(catalog: Catalog) -> SeriesEntry:
    """A series with two acquisition runs."""
    return next(entry for entry in catalog.series if entry.acquisition_runs > 1)
