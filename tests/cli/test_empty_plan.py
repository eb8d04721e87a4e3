"""``plan`` and ``run`` never stay silent about a query that matched nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tcia_fetch.cli.main import cli
from tcia_fetch.testing import BackgroundServer, Catalog, serve_in_background


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=5, collections=3, patients_per_collection=2, series_per_study=2)


@pytest.fixture(scope="module")
def server(catalog: Catalog) -> Iterator[BackgroundServer]:
    with serve_in_background(catalog=catalog) as running:
        yield running


def invoke(server: BackgroundServer, tmp_path: Path, *args: str) -> Result:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "TCIA_FETCH_BASE_URL": server.base_url}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def job(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return str(path)


def test_plan_of_a_typo_exits_1_and_names_the_closest_collection(
    server: BackgroundServer, catalog: Catalog, tmp_path: Path
) -> None:
    name = catalog.series[0].collection
    result = invoke(server, tmp_path, "plan", job(tmp_path, f'[[query]]\ncollection = "{name}C"\n'))
    assert result.exit_code == 1
    assert f"collection '{name}C' matched no series; did you mean '{name}'?" in result.stdout
    as_json = invoke(
        server, tmp_path, "plan", "--format", "json", job(tmp_path, f'[[query]]\ncollection = "{name}C"\n')
    )
    [finding] = json.loads(as_json.stdout)["summary"]["empty_queries"]
    assert finding["culprit"] == "collection" and finding["suggestions"][0] == name


def test_plan_with_one_empty_combination_warns_but_exits_0(
    server: BackgroundServer, catalog: Catalog, tmp_path: Path
) -> None:
    name = catalog.series[0].collection
    text = f'[[query]]\ncollection = ["{name}", "{name}C"]\n'
    result = invoke(server, tmp_path, "plan", job(tmp_path, text))
    assert result.exit_code == 0, result.stdout
    assert "note" in result.stdout and f"did you mean '{name}'?" in result.stdout


def test_run_of_a_typo_exits_1_with_the_message_in_output_and_report(
    server: BackgroundServer, catalog: Catalog, tmp_path: Path
) -> None:
    name = catalog.series[0].collection
    out = tmp_path / "out"
    text = f'[[query]]\ncollection = "{name}"\nmodality = "XA"\n'
    result = invoke(server, tmp_path, "run", job(tmp_path, text), "--out", str(out), "--quiet")
    assert result.exit_code == 1
    assert "modality 'XA' matched no series in collection" in result.stdout
    report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
    assert report["planned"] == 0 and report["done"] == 0 and report["exit_code"] == 1
    assert any("modality 'XA' matched no series" in error for error in report["plan_errors"])
    assert report["plan"]["empty_queries"][0]["culprit"] == "modality"


def test_query_series_notes_an_empty_result_on_stderr(
    server: BackgroundServer, catalog: Catalog, tmp_path: Path
) -> None:
    name = catalog.series[0].collection
    result = invoke(server, tmp_path, "query", "series", "--collection", name[:-1], "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert f"did you mean '{name}'?" in result.stderr
