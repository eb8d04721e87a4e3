"""The notebook functions against the fake server: DataFrames with proper dtypes, from plain code
and from inside a running event loop (as in Jupyter), empty results that say why, downloads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import tcia_fetch as tf
from tcia_fetch.errors import InputError
from tcia_fetch.testing import (
    BackgroundServer,
    Catalog,
    FakeNBIA,
    FaultKind,
    FaultPlan,
    FaultRule,
    serve_in_background,
)


def _collection(catalog: Catalog) -> str:
    return catalog.series[0].collection


def lookups(catalog: Catalog) -> dict[str, Callable[[], Any]]:
    """One call of every look-up, as a notebook would write it."""
    name = _collection(catalog)
    first = catalog.series[0]
    return {
        "collections": lambda: tf.collections(),
        "collection_counts": lambda: tf.collections(counts=True),
        "modalities": lambda: tf.modalities(name),
        "body_parts": lambda: tf.body_parts(collection=name),
        "manufacturers": lambda: tf.manufacturers(name),
        "patients": lambda: tf.patients(name),
        "studies": lambda: tf.studies(name),
        "series": lambda: tf.series(collection=name),
        "series_size": lambda: tf.series_size(first.uid),
    }


def check(results: dict[str, pd.DataFrame], catalog: Catalog) -> None:
    name = _collection(catalog)
    mine = [e for e in catalog.series if e.collection == name]
    assert sorted(results["collections"]["Collection"]) == sorted({e.collection for e in catalog.series})
    assert results["collection_counts"]["Count"].dtype == "Int64"
    assert set(results["modalities"]["Modality"]) == {e.modality.upper() for e in mine if e.modality}
    assert "BodyPartExamined" in results["body_parts"].columns
    assert len(results["manufacturers"]) >= 1
    assert set(results["patients"]["PatientId"]) == {e.patient_id for e in mine}
    studies = results["studies"]
    assert studies["StudyDate"].dtype == "datetime64[ns]" and studies["SeriesCount"].dtype == "Int64"
    series = results["series"]
    assert set(series["SeriesInstanceUID"]) == {e.uid for e in mine}
    assert series["ImageCount"].dtype == "Int64" and series["FileSize"].dtype == "Int64"
    assert series["SeriesDate"].dtype == "datetime64[ns]"
    by_uid = {e.uid: e for e in mine}
    for uid, count in zip(series["SeriesInstanceUID"], series["ImageCount"], strict=True):
        assert count == by_uid[uid].instance_count
    size = results["series_size"]
    first = catalog.series[0]
    assert list(size.columns) == ["SeriesInstanceUID", "TotalSizeInBytes", "ObjectCount"]
    assert size["TotalSizeInBytes"].iloc[0] == first.size_row()["TotalSizeInBytes"]
    assert size["ObjectCount"].iloc[0] == first.instance_count


def test_every_function_returns_typed_frames_from_plain_code(catalog: Catalog) -> None:
    check({name: call() for name, call in lookups(catalog).items()}, catalog)


def test_every_function_works_inside_a_running_event_loop(catalog: Catalog) -> None:
    async def notebook_cell() -> dict[str, pd.DataFrame]:
        asyncio.get_running_loop()  # what Jupyter's kernel has while a cell runs
        return {name: call() for name, call in lookups(catalog).items()}

    check(asyncio.run(notebook_cell()), catalog)


def test_async_twins_for_async_apps(catalog: Catalog) -> None:
    name = _collection(catalog)

    async def app() -> dict[str, pd.DataFrame]:
        return {
            "collections": await tf.collections_async(),
            "collection_counts": await tf.collections_async(counts=True),
            "modalities": await tf.modalities_async(name),
            "body_parts": await tf.body_parts_async(name),
            "manufacturers": await tf.manufacturers_async(name),
            "patients": await tf.patients_async(name),
            "studies": await tf.studies_async(name),
            "series": await tf.series_async(collection=name),
            "series_size": await tf.series_size_async(catalog.series[0].uid),
        }

    check(asyncio.run(app()), catalog)


def test_where_filters_like_the_cli(catalog: Catalog) -> None:
    name = _collection(catalog)
    low = min(e.instance_count for e in catalog.series if e.collection == name)
    frame = tf.series(collection=name, where=f"ImageCount > {low}")
    expected = {e.uid for e in catalog.series if e.collection == name and e.instance_count > low}
    assert set(frame["SeriesInstanceUID"]) == expected
    with pytest.raises(InputError, match="unknown key 'ImageCont'"):
        tf.series(collection=name, where="ImageCont > 1")
    with pytest.raises(InputError, match="unknown filter 'colection'"):
        tf.series(colection=name)


def test_a_typo_gives_an_empty_frame_and_a_warning_with_the_closest_value(catalog: Catalog) -> None:
    name = _collection(catalog)
    with pytest.warns(tf.EmptyResultWarning, match=f"did you mean '{name}'") as record:
        frame = tf.series(collection=name + "X", modality="CT")
    assert record[0].filename == __file__  # the warning points at the user's line
    assert frame.empty and "SeriesInstanceUID" in frame.columns and frame["ImageCount"].dtype == "Int64"
    with pytest.warns(tf.EmptyResultWarning, match=f"collection '{name.lower()}x' matched no series"):
        assert tf.modalities(name.lower() + "x").empty
    with pytest.warns(tf.EmptyResultWarning, match="kept none"):
        assert tf.series(collection=name, where="ImageCount > 1000000").empty

    async def in_app() -> pd.DataFrame:
        return await tf.patients_async(name + "X")

    with pytest.warns(tf.EmptyResultWarning, match=f"did you mean '{name}'"):
        assert asyncio.run(in_app()).empty


def test_series_size_of_many_and_of_an_unknown_series(catalog: Catalog) -> None:
    frame = tf.series(collection=_collection(catalog))
    sizes = tf.series_size(frame)
    assert list(sizes["SeriesInstanceUID"]) == list(frame["SeriesInstanceUID"])
    assert (sizes["ObjectCount"] == frame["ImageCount"]).all()
    with pytest.warns(tf.EmptyResultWarning, match="unknown or not public"):
        unknown = tf.series_size("1.2.3.4.5")
    assert unknown["TotalSizeInBytes"].isna().all()


def test_configure_and_per_call_base_url_follow_the_cli_precedence(
    server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = "http://127.0.0.1:9/nbia-api/services/v4/"
    monkeypatch.setenv("TCIA_FETCH_BASE_URL", dead)
    assert not tf.collections().empty  # configure() is the session's --base-url: beats the env
    tf.configure()
    assert not tf.collections(base_url=server.base_url).empty  # the call's own argument beats the env


def test_download_from_a_frame_inside_a_running_loop_then_resume(catalog: Catalog, tmp_path: Path) -> None:
    name = _collection(catalog)
    out = tmp_path / "data"

    async def notebook_cell() -> tuple[tf.DownloadReport, pd.DataFrame]:
        chosen = tf.series(collection=name)
        return tf.download(chosen, out=out, progress=False), chosen

    report, chosen = asyncio.run(notebook_cell())
    assert isinstance(report, tf.RunReport) and report.ok
    assert report.done == len(chosen) and report.failed == 0
    assert report.failures_frame().empty
    metadata = report.metadata_frame()
    assert set(metadata["Series UID"]) == set(chosen["SeriesInstanceUID"])
    for location in metadata["File Location"]:
        assert any((out / location.lstrip("./")).glob("*.dcm"))
    # the JSON contract is RunReport's
    on_disk = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
    assert on_disk["done"] == report.done and on_disk["failures"] == []
    again = tf.download(list(chosen["SeriesInstanceUID"]), out=out, progress=False)
    assert again.skipped == len(chosen) and again.done == 0 and again.ok


def test_download_takes_a_manifest_a_job_and_a_single_uid(catalog: Catalog, tmp_path: Path) -> None:
    uids = [e.uid for e in catalog.series[:2]]
    manifest = tmp_path / "chosen.tcia"
    manifest.write_text("downloadServerUrl=x\nListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    assert tf.download(manifest, out=tmp_path / "a", progress=False).done == 2
    assert tf.download(str(manifest), out=tmp_path / "b", progress=False, concurrency=1).done == 2
    assert tf.download(tf.load_job(manifest), out=tmp_path / "c", progress=False).done == 2
    assert tf.download(uids[0], out=tmp_path / "d", progress=False, layout="flat").done == 1
    assert (tmp_path / "d" / uids[0]).is_dir()


def test_download_failures_are_a_frame(catalog: Catalog, tmp_path: Path) -> None:
    target = catalog.series[1].uid
    fake = FakeNBIA(
        catalog, faults=FaultPlan(rules=[FaultRule(FaultKind.ZIP_SLIP, series_uid=target, times=1000)])
    )
    with serve_in_background(fake) as hostile:
        report = tf.download(
            [catalog.series[0].uid, target], out=tmp_path / "out", progress=False, base_url=hostile.base_url
        )
    assert report.done == 1 and report.failed == 1 and report.exit_code == 1
    failures = report.failures_frame()
    assert list(failures["SeriesInstanceUID"]) == [target]
    assert failures["attempts"].dtype == "Int64"
    assert "reason" in failures.columns and failures["reason"].iloc[0]


def test_download_of_a_job_whose_query_matches_nothing_carries_the_finding(
    catalog: Catalog, tmp_path: Path
) -> None:
    name = _collection(catalog)
    job = tmp_path / "job.toml"
    job.write_text(f'[[query]]\ncollection = "{name}CC"\n')
    with pytest.warns(tf.EmptyResultWarning, match=f"did you mean '{name}'"):
        report = tf.download(job, out=tmp_path / "out", progress=False)
    assert report.planned == 0 and report.exit_code == 1
    assert any(f"did you mean '{name}'" in message for message in report.empty_queries)
    assert report.plan["empty_queries"][0]["culprit"] == "collection"


def test_download_refuses_bad_input_before_any_traffic(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown option 'concurency'"):
        tf.download(["1.2.3"], out=tmp_path, concurency=2)
    with pytest.raises(InputError, match="no SeriesInstanceUID column"):
        tf.download(pd.DataFrame({"uid": ["1.2.3"]}), out=tmp_path)
    with pytest.raises(InputError, match="row 1"):
        tf.download(["1.2.3", "1.2.x"], out=tmp_path)
    with pytest.raises(InputError, match="nothing to download"):
        tf.download(pd.DataFrame({"SeriesInstanceUID": []}), out=tmp_path)


def test_tcia_fetch_run_works_inside_a_running_loop(
    tmp_path: Path, server: BackgroundServer, catalog: Catalog
) -> None:
    uid = catalog.series[0].uid
    manifest = tmp_path / "one.tcia"
    manifest.write_text(f"ListOfSeriesToDownload=\n{uid}\n")

    async def notebook_cell() -> tf.RunReport:
        options = tf.RunOptions(out=tmp_path / "out", base_url=server.base_url)
        return tf.run(manifest, options)  # used to fail: "already running asyncio in this thread"

    report = asyncio.run(notebook_cell())
    assert report.done == 1 and report.ok
