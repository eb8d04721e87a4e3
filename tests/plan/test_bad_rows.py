"""One bad server row fails its own series only (issue 14, item 4): planning goes on for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.job.jobfile import JobSpec, UidOrigin, load_job
from tcia_fetch.plan.model import PlannedSeries
from tcia_fetch.plan.planner import Planner, PlannerOptions
from tcia_fetch.plan.rows import BAD_ROW_REFERENCE, bad_uid_label
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule
from tcia_fetch.uid import is_valid_uid

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02, floor_s=0.0)
HOSTILE_UIDS = ("../../../etc/evil", "", "1." * 149 + "1", "1.2.840.\x1b[31m99")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=14, collections=1, patients_per_collection=2, series_per_study=3)


async def plan_with(
    catalog: Catalog, job: JobSpec, rules: list[FaultRule], **options: object
) -> tuple[list[PlannedSeries], Planner]:
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    items: list[PlannedSeries] = []

    async def emit(item: PlannedSeries) -> None:
        items.append(item)

    async with fake.serve() as server, NBIAClient(base_url=server.base_url) as client:
        planner = Planner(
            client,
            job,
            retry_policy=FAST,
            clock=SystemClock(),
            options=PlannerOptions(**options),  # type: ignore[arg-type]
        )
        await planner.run(emit)
    return items, planner


def query_job(tmp_path: Path, collection: str) -> JobSpec:
    path = tmp_path / "job.toml"
    path.write_text(f'[[query]]\ncollection = "{collection}"\n')
    return load_job(path)


@pytest.mark.parametrize("full_metadata", [False, True], ids=["getSeries", "descriptive"])
async def test_bad_uids_in_getseries_fail_alone(
    tmp_path: Path, catalog: Catalog, full_metadata: bool
) -> None:
    rule = FaultRule(FaultKind.BAD_UID_ROWS, times=None, uids=HOSTILE_UIDS)
    items, planner = await plan_with(
        catalog, query_job(tmp_path, catalog.collections[0]), [rule], full_metadata=full_metadata
    )
    assert sorted(item.series_uid for item in items) == sorted(entry.uid for entry in catalog.series)
    problems = planner.summary.problems
    assert {problem.series_uid for problem in problems} == {bad_uid_label(uid) for uid in HOSTILE_UIDS}
    assert {problem.reference for problem in problems} == {BAD_ROW_REFERENCE}
    assert all(problem.origin == "query[0]" for problem in problems)
    by_label = {problem.series_uid: problem.reason for problem in problems}
    assert "a UID holds only digits and dots" in by_label[bad_uid_label("../../../etc/evil")]
    assert "the limit is 64" in by_label[bad_uid_label(HOSTILE_UIDS[2])]
    assert all("\x1b" not in problem.series_uid + problem.reason for problem in problems)
    assert not planner.summary.empty_queries and not planner.summary.query_errors


async def test_a_row_that_does_not_fit_fails_its_series_not_the_query(
    tmp_path: Path, catalog: Catalog
) -> None:
    broken = catalog.series[1].uid
    rule = FaultRule(FaultKind.ROW_VALUE, series_uid=broken, times=None, column="ImageCount", value="many")
    items, planner = await plan_with(catalog, query_job(tmp_path, catalog.collections[0]), [rule])
    assert sorted(item.series_uid for item in items) == sorted(
        entry.uid for entry in catalog.series if entry.uid != broken
    )
    [problem] = planner.summary.problems
    assert (problem.series_uid, problem.reference) == (broken, BAD_ROW_REFERENCE)
    assert "ImageCount" in problem.reason


async def test_one_bad_row_in_a_metadata_chunk_fails_that_series_only(catalog: Catalog) -> None:
    uids = [entry.uid for entry in catalog.series]
    broken = uids[3]
    rule = FaultRule(FaultKind.ROW_VALUE, series_uid=broken, times=None, column="FileSize", value="-5")
    job = JobSpec.for_uids([UidOrigin(uid, f"list:{index}") for index, uid in enumerate(uids)])
    items, planner = await plan_with(catalog, job, [rule], metadata_chunk=500)
    assert sorted(item.series_uid for item in items) == sorted(uid for uid in uids if uid != broken)
    [problem] = planner.summary.problems
    assert (problem.series_uid, problem.reference, problem.origin) == (broken, BAD_ROW_REFERENCE, "list:3")
    assert "FileSize" in problem.reason and "negative" in problem.reason


def test_bad_uid_labels_are_stable_bounded_printable_and_never_uids() -> None:
    texts = [*HOSTILE_UIDS, "1.2.3." + "4" * 500, "1.2.3." + "4" * 499 + "5", None, "é\u202e.1"]
    labels = [bad_uid_label(text) for text in texts]
    assert labels == [bad_uid_label(text) for text in texts]  # deterministic: reruns match
    assert len(set(labels)) == len(labels)  # long texts differing only at the end stay apart
    for label in labels:
        assert label.isprintable() and label.isascii()
        assert len(label) <= 100
        assert not is_valid_uid(label)
