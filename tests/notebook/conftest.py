"""A fake NBIA in a background thread for the notebook functions, and a clean session config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tcia_fetch as tf
from tcia_fetch.testing import BackgroundServer, Catalog, serve_in_background


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=5, collections=3, patients_per_collection=2, series_per_study=2)


@pytest.fixture(scope="module")
def server(catalog: Catalog) -> Iterator[BackgroundServer]:
    with serve_in_background(catalog=catalog) as running:
        yield running


@pytest.fixture(autouse=True)
def session(server: BackgroundServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test talks to the fake through tf.configure, with no user config or environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TCIA_FETCH_BASE_URL", raising=False)
    tf.configure(base_url=server.base_url)
    yield
    tf.configure()
