"""``query ... --format parquet``: typed columns that read back with pandas; never to a terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from tcia_fetch.cli.query import query
from tcia_fetch.testing import BackgroundServer, Catalog, serve_in_background

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=5, collections=2, patients_per_collection=2, series_per_study=2)


@pytest.fixture(scope="module")
def server(catalog: Catalog) -> Iterator[BackgroundServer]:
    with serve_in_background(catalog=catalog) as running:
        yield running


def run(server: BackgroundServer, tmp_path: Path, *args: str) -> Result:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "TCIA_FETCH_BASE_URL": server.base_url}
    return CliRunner().invoke(query, list(args), env=env, catch_exceptions=False)


def test_series_parquet_file_reads_back_with_numbers_and_dates(
    server: BackgroundServer, catalog: Catalog, tmp_path: Path
) -> None:
    name = catalog.series[0].collection
    target = tmp_path / "series.parquet"
    result = run(
        server, tmp_path, "series", "--collection", name, "--format", "parquet", "--output", str(target)
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    frame = pd.read_parquet(target)
    mine = {e.uid: e for e in catalog.series if e.collection == name}
    assert set(frame["SeriesInstanceUID"]) == set(mine)
    assert frame["ImageCount"].dtype == "Int64" and frame["FileSize"].dtype == "Int64"
    assert frame["SeriesDate"].dtype == "datetime64[ns]"
    for uid, count in zip(frame["SeriesInstanceUID"], frame["ImageCount"], strict=True):
        assert count == mine[uid].instance_count
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: nothing left behind


def test_parquet_to_a_pipe_and_with_columns(server: BackgroundServer, tmp_path: Path) -> None:
    result = run(
        server, tmp_path, "collections", "--counts", "--format", "parquet", "--columns", "Collection,Count"
    )
    assert result.exit_code == 0, result.stderr
    frame = pd.read_parquet(io.BytesIO(result.stdout_bytes))
    assert list(frame.columns) == ["Collection", "Count"] and frame["Count"].dtype == "Int64"


def test_output_works_for_text_formats_too(server: BackgroundServer, tmp_path: Path) -> None:
    target = tmp_path / "collections.csv"
    result = run(server, tmp_path, "collections", "--format", "csv", "-o", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert target.read_text().splitlines()[0] == "Collection"


def test_parquet_to_a_terminal_is_refused_before_any_request(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tcia_fetch",
                "query",
                "collections",
                "--format",
                "parquet",
                "--base-url",
                "http://127.0.0.1:9/nbia-api/services/v4/",
            ],
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
            text=True,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "parquet is binary: give --output FILE" in result.stderr
