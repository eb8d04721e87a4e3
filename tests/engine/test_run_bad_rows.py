"""A run meeting bad rows: the good series verified on disk, the bad ones failed series (issue 14).

In process (cheap); the CLI end state of the same situations is the hostile-server campaign's
(tests/reliability/test_hostile_rows.py).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.plan.rows import BAD_ROW_REFERENCE, bad_uid_label
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.reconcile import summarize
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule

from .oracle import assert_destination

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=2, integrity_attempts=2, base_s=0.01, cap_s=0.02, floor_s=0.0)
EVIL = ("../../../etc/evil", "1.2.\x1b]0;owned\x07.3")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(
        seed=41,
        collections=1,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(2, 3),
        instance_bytes=(1_500, 3_000),
    )


async def test_bad_uid_rows_fail_alone_in_report_journal_and_reruns(tmp_path: Path, catalog: Catalog) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'[download]\nconcurrency = 3\n\n[[query]]\ncollection = "{catalog.collections[0]}"\n')
    out = tmp_path / "out"
    good = [entry.uid for entry in catalog.series]
    labels = {bad_uid_label(uid) for uid in EVIL}
    fake = FakeNBIA(
        catalog, faults=FaultPlan(rules=[FaultRule(FaultKind.BAD_UID_ROWS, times=None, uids=EVIL)])
    )
    async with fake.serve() as server:
        options = RunOptions(out=out, base_url=server.base_url)
        first = await fetch(job, options, retry_policy=FAST)
        second = await fetch(job, options, retry_policy=FAST)
        retried = await fetch(
            job, RunOptions(out=out, base_url=server.base_url, retry_failed=True), retry_policy=FAST
        )
    assert (first.done, first.failed, first.planned) == (len(good), 2, len(good) + 2)
    assert {f.series_uid: f.reference for f in first.failures} == dict.fromkeys(labels, BAD_ROW_REFERENCE)
    assert first.fatal_error is None
    assert_destination(out, catalog, done=good, absent=[])
    assert not (tmp_path / "etc").exists() and not (out.parent / "etc").exists()
    # the rerun reports the same failures and fetches nothing; --retry-failed asks for them again
    for rerun in (second, retried):
        assert rerun.done == 0 and rerun.fatal_error is None
        assert {f.series_uid for f in rerun.failures} == labels
    assert second.skipped == len(good)
    # status reads the journal: the bad series are failed there too, not forever pending
    journal = Journal.open(out / ".tcia-fetch", run_id="reader")
    try:
        summary = summarize(journal, None)
        failed = {record.series_uid: record.reference for record in journal.iter_latest("failed")}
    finally:
        journal.close()
    assert (summary.done, summary.failed) == (len(good), 2)
    assert failed == dict.fromkeys(labels, BAD_ROW_REFERENCE)


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
