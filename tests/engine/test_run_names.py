"""A run meeting a reserved collection name and colliding descriptive paths (issue 14, items 5, 9).

In process (cheaper than the CLI): every series published, metadata.csv still a file, the twins
under two paths, and the rerun idle and clean. Bad rows are judged through the CLI by the
hostile-server campaign (tests/reliability/test_hostile_rows.py).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=2, integrity_attempts=2, base_s=0.01, cap_s=0.02, floor_s=0.0)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(
        seed=41,
        collections=1,
        patients_per_collection=1,
        series_per_study=2,
        instances_per_series=(2, 3),
        instance_bytes=(1_500, 3_000),
    )


TWINS = ("1.2.826.0.1.3680043.10.1.77712345", "1.2.826.0.1.3680043.10.2.88812345")
TWIN_COLUMNS = (
    "PatientID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyID",
    "StudyDesc",
    "SeriesNumber",
    "SeriesDescription",
)


async def test_reserved_collection_name_and_descriptive_twins_publish_everything(tmp_path: Path) -> None:
    catalog = Catalog.generate(
        seed=42,
        collections=1,
        patients_per_collection=1,
        series_per_study=2,
        instances_per_series=(2, 3),
        instance_bytes=(1_500, 3_000),
        extra_series_uids=TWINS,
    )
    uids = [entry.uid for entry in catalog.series]
    first = catalog.get(TWINS[0])
    assert first is not None
    row = first.metadata_row()
    rules = [
        FaultRule(FaultKind.ROW_VALUE, series_uid=uid, times=None, column="Collection", value="metadata.csv")
        for uid in uids
    ] + [
        FaultRule(FaultKind.ROW_VALUE, series_uid=TWINS[1], times=None, column=column, value=row.get(column))
        for column in TWIN_COLUMNS
    ]
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    job = tmp_path / "job.toml"
    job.write_text("[series]\nuids = [" + ", ".join(f'"{uid}"' for uid in uids) + "]\n")
    out = tmp_path / "out"
    async with fake.serve() as server:
        options = RunOptions(out=out, base_url=server.base_url, layout="descriptive")
        report = await fetch(job, options, retry_policy=FAST)
        again = await fetch(job, options, retry_policy=FAST)
    assert (report.done, report.failed, report.fatal_error) == (len(uids), 0, None)
    assert (again.done, again.skipped, again.failed, again.fatal_error) == (0, len(uids), 0, None)
    names = {path.name for path in out.iterdir()} - {"catalog.parquet", "instances.parquet"}
    assert names == {".tcia-fetch", "_metadata.csv", "metadata.csv"}
    text = (out / "metadata.csv").read_text(encoding="utf-8")
    located = {row["Series UID"]: out / row["File Location"] for row in csv.DictReader(io.StringIO(text))}
    assert sorted(located) == sorted(uids)
    a, b = located[TWINS[0]], located[TWINS[1]]
    assert a.parent == b.parent
    assert b.name.startswith(a.name + "~") or a.name.startswith(b.name + "~")
    for uid, where in located.items():
        entry = catalog.get(uid)
        assert entry is not None
        assert sorted(path.name for path in where.glob("*.dcm")) and len(list(where.glob("*.dcm"))) == (
            entry.instance_count
        )


async def test_a_directory_left_where_metadata_csv_goes_is_reported_not_fatal(
    tmp_path: Path, catalog: Catalog
) -> None:
    """An older version published a collection "metadata.csv" as a directory: runs went on dying."""
    out = tmp_path / "out"
    old = out / "metadata.csv" / "P-1" / "1.2.3" / "1.2.3.4"
    old.mkdir(parents=True)
    (old / "1-1.dcm").write_bytes(b"old")
    uids = [entry.uid for entry in catalog.series[:2]]
    job = tmp_path / "job.toml"
    job.write_text("[series]\nuids = [" + ", ".join(f'"{uid}"' for uid in uids) + "]\n")
    async with FakeNBIA(catalog).serve() as server:
        report = await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=FAST)
    assert (report.done, report.failed, report.fatal_error) == (2, 0, None)
    [message] = report.plan_errors
    assert f"{out / 'metadata.csv'} is a directory" in message and "tcia-fetch verify" in message
    assert report.exit_code == 1
    assert (old / "1-1.dcm").read_bytes() == b"old"  # nothing of the user's is touched
