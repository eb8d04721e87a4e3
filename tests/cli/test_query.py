"""``tcia-fetch query`` against a fake NBIA server running in a background thread."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tcia_fetch.cli.query import query
from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer


class _BackgroundServer:
    """Runs FakeNBIA.serve() on its own event loop in a daemon thread."""

    def __init__(self, fake: FakeNBIA) -> None:
        self.fake = fake
        self.server: RunningServer | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self.fake.serve() as server:
                self.server = server
                self._ready.set()
                await self._stop.wait()

        asyncio.run(main())

    def __enter__(self) -> RunningServer:
        self._thread.start()
        assert self._ready.wait(30), "fake server did not start"
        assert self.server is not None
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=7)


@pytest.fixture(scope="module")
def server(catalog: Catalog) -> Iterator[RunningServer]:
    with _BackgroundServer(FakeNBIA(catalog)) as running:
        yield running


@pytest.fixture
def run(server: RunningServer, tmp_path: Path) -> Iterator[object]:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "TCIA_FETCH_BASE_URL": None}

    def invoke(
        *args: str, base_url: str | None = server.base_url, extra_env: dict[str, str] | None = None
    ) -> Result:
        argv = list(args)
        if base_url is not None:
            argv += ["--base-url", base_url]
        return CliRunner().invoke(query, argv, env={**env, **(extra_env or {})}, catch_exceptions=False)

    yield invoke


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_collections_table(run, catalog: Catalog) -> None:
    out = _ok(run("collections"))
    for collection in {entry.collection for entry in catalog.series}:
        assert collection in out
    assert "Collection" in out


def test_collections_json_is_the_server_rows(run, catalog: Catalog) -> None:
    rows = json.loads(_ok(run("collections", "--format", "json")))
    assert sorted(row["Collection"] for row in rows) == sorted({entry.collection for entry in catalog.series})


def test_modality_counts_json(run) -> None:
    rows = json.loads(_ok(run("modalities", "--counts", "--format", "json")))
    assert rows and all({"Modality", "Count"} <= set(row) for row in rows)


def test_series_json_keys_as_the_server_names_them(run, catalog: Catalog) -> None:
    entry = catalog.series[0]
    rows = json.loads(_ok(run("series", "--collection", entry.collection, "--format", "json")))
    expected = [e.series_row() for e in catalog.series if e.collection == entry.collection]
    assert sorted(rows, key=lambda r: r["SeriesInstanceUID"]) == sorted(
        expected, key=lambda r: str(r["SeriesInstanceUID"])
    )


def test_series_csv_and_jsonl(run, catalog: Catalog) -> None:
    out = _ok(run("series", "--format", "csv"))
    records = list(csv.DictReader(io.StringIO(out)))
    assert len(records) == len(catalog.series)
    assert {r["SeriesInstanceUID"] for r in records} == {e.uid for e in catalog.series}
    by_uid = {e.uid: e for e in catalog.series}
    assert all(int(r["ImageCount"]) == by_uid[r["SeriesInstanceUID"]].instance_count for r in records)
    lines = _ok(run("series", "--format", "jsonl", "--columns", "SeriesInstanceUID,FileSize")).splitlines()
    assert len(lines) == len(catalog.series)
    assert all(set(json.loads(line)) == {"SeriesInstanceUID", "FileSize"} for line in lines)


def test_series_table_with_columns(run, catalog: Catalog) -> None:
    out = _ok(run("series", "--columns", "SeriesInstanceUID,ImageCount"))
    assert "SeriesInstanceUID" in out and "ImageCount" in out and "Modality" not in out
    assert f"{len(catalog.series)} rows" in out


def test_series_where(run, catalog: Catalog) -> None:
    first = catalog.series[0]
    expression = f"ImageCount>=3 and (Modality={first.modality} or Modality=XX)"
    rows = json.loads(_ok(run("series", "--where", expression, "--format", "json")))
    expected = {e.uid for e in catalog.series if e.instance_count >= 3 and e.modality == first.modality}
    assert {row["SeriesInstanceUID"] for row in rows} == expected


@pytest.mark.parametrize(
    ("expression", "fragment"), [("ImageCont>5", "unknown key 'ImageCont'"), ("ImageCount >", "col 13")]
)
def test_bad_where_is_one_line_exit_2(run, server: RunningServer, expression: str, fragment: str) -> None:
    result = run("series", "--where", expression)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_series_size(run, catalog: Catalog) -> None:
    entry = catalog.series[1]
    [row] = json.loads(_ok(run("series-size", entry.uid, "--format", "json")))
    assert row == {"TotalSizeInBytes": entry.total_bytes, "ObjectCount": entry.instance_count}
    assert str(entry.total_bytes) in _ok(run("series-size", entry.uid))


def test_series_size_unknown_series(run) -> None:
    result = run("series-size", "1.2.3.4.5.6.7")
    assert result.exit_code == 1
    assert "1.2.3.4.5.6.7" in result.stderr and "unknown or not public" in result.stderr


def test_series_size_invalid_uid_is_bad_input(run) -> None:
    result = run("series-size", "not-a-uid")
    assert result.exit_code == 2
    assert "digits and dots" in result.stderr


def test_patients_and_studies(run, catalog: Catalog) -> None:
    entry = catalog.series[0]
    assert entry.patient_id in _ok(run("patients", "--collection", entry.collection))
    rows = json.loads(_ok(run("studies", "--patient-id", entry.patient_id, "--format", "json")))
    assert entry.study_uid in {row["StudyInstanceUID"] for row in rows}


def test_base_url_from_env_and_config(run, server: RunningServer, tmp_path: Path) -> None:
    _ok(run("collections", base_url=None, extra_env={"TCIA_FETCH_BASE_URL": server.base_url}))
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nbase_url = "{server.base_url}"\n')
    _ok(run("collections", "--config", str(config), base_url=None))


def test_unknown_column_is_bad_input(run) -> None:
    result = run("series", "--columns", "Nope")
    assert result.exit_code == 2 and "unknown column 'Nope'" in result.stderr


def test_unreachable_server_is_one_line_error(run) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("collections", base_url=f"http://127.0.0.1:{port}/nbia-api/services/v4/")
    assert result.exit_code == 1
    assert result.stderr.startswith("tcia-fetch: error: cannot connect")
    assert len(result.stderr.strip().splitlines()) == 1
