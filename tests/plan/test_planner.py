"""The planner against the fake server: expansion, de-duplication, bulk sizes, streaming hand-off."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Unpack

import anyio
import pytest

from tcia_fetch.api.client import NBIAClient, SeriesFilters
from tcia_fetch.api.models import RejectedRow, SeriesRow
from tcia_fetch.api.parse import Row
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.job.jobfile import JobSpec, UidOrigin, load_job
from tcia_fetch.job.manifest import read_manifest
from tcia_fetch.plan.model import PlannedSeries
from tcia_fetch.plan.planner import FIRST_METADATA_CHUNK, Planner, PlannerOptions
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, LoadModel

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, floor_s=0.0)
MANIFESTS = Path(__file__).parents[1] / "job" / "manifests"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=5, collections=3, patients_per_collection=2, series_per_study=2)


async def plan_all(
    catalog: Catalog, job: JobSpec, *, fake: FakeNBIA | None = None, **options: object
) -> tuple[list[PlannedSeries], Planner, FakeNBIA]:
    fake = fake or FakeNBIA(catalog)
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
    return items, planner, fake


def uid_job(uids: list[str]) -> JobSpec:
    return JobSpec.for_uids([UidOrigin(uid, f"test:{index}") for index, uid in enumerate(uids)])


def job_file(tmp_path: Path, text: str) -> JobSpec:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return load_job(path)


async def test_queries_and_uids_are_merged_without_duplicates(tmp_path: Path, catalog: Catalog) -> None:
    first = catalog.series[0]
    collection = first.collection
    in_collection = [entry for entry in catalog.series if entry.collection == collection]
    job = job_file(
        tmp_path,
        f'[[query]]\ncollection = "{collection}"\n\n[[query]]\ncollection = "{collection.lower()}"\n\n'
        f'[series]\nuids = ["{first.uid}"]\n',
    )
    items, planner, _ = await plan_all(catalog, job)
    uids = [item.series_uid for item in items]
    assert sorted(uids) == sorted(entry.uid for entry in in_collection)
    assert len(uids) == len(set(uids))
    # the second query (case-insensitive match) names every series again, and the UID list one more
    assert planner.summary.duplicates == len(in_collection) + 1
    for item in items:
        entry = catalog.get(item.series_uid)
        assert entry is not None
        assert item.expectation.instance_count == entry.instance_count
        assert item.expectation.total_bytes == entry.total_bytes
        assert item.metadata["Collection"] == entry.collection


async def test_client_side_filters_select_rows(tmp_path: Path, catalog: Catalog) -> None:
    counts = sorted({entry.instance_count for entry in catalog.series})
    low = counts[len(counts) // 2]
    listed = ", ".join(f'"{c}"' for c in catalog.collections)
    job = job_file(tmp_path, f"[[query]]\ncollection = [{listed}]\nimage_count = {{ min = {low} }}\n")
    items, _, _ = await plan_all(catalog, job)
    expected = {entry.uid for entry in catalog.series if entry.instance_count >= low}
    assert {item.series_uid for item in items} == expected


async def test_unknown_and_restricted_uids_become_problems(tmp_path: Path, catalog: Catalog) -> None:
    restricted = catalog.series[1].uid
    unknown = "1.2.3.4.5.6.7.8.9"
    job = uid_job([catalog.series[0].uid, restricted, unknown])
    fake = FakeNBIA(catalog, restricted_series=frozenset({restricted}))
    items, planner, _ = await plan_all(catalog, job, fake=fake)
    assert [item.series_uid for item in items] == [catalog.series[0].uid]
    problems = {problem.series_uid: problem.reference for problem in planner.summary.problems}
    assert problems == {restricted: "series-unavailable", unknown: "series-unavailable"}


async def test_metadata_is_fetched_in_chunks(catalog: Catalog) -> None:
    job = uid_job([entry.uid for entry in catalog.series])
    items, _, fake = await plan_all(catalog, job, metadata_chunk=4)
    posts = [record for record in fake.request_log if record.endpoint == "getSeriesMetadata"]
    assert len(items) == len(catalog.series)
    assert len(posts) == -(-len(catalog.series) // 4)
    assert not [record for record in fake.request_log if record.endpoint == "getSeriesSize"]


async def test_the_first_metadata_lookup_is_small_so_downloads_start_early() -> None:
    wide = Catalog.generate(seed=6, collections=2, patients_per_collection=10, series_per_study=3)
    uids = [entry.uid for entry in wide.series]
    # One query at a time, so the log (in order of completion) is also the order of asking.
    items, _, fake = await plan_all(wide, uid_job(uids), query_concurrency=1)
    posts = [record for record in fake.request_log if record.endpoint == "getSeriesMetadata"]
    sizes = [len(dict(post.form_items)["list"].split(",")) for post in posts]
    assert len(items) == len(uids) == 60
    assert sizes == [FIRST_METADATA_CHUNK, 60 - FIRST_METADATA_CHUNK]  # then chunks of metadata_chunk


async def test_first_series_is_handed_over_before_planning_ends(catalog: Catalog) -> None:
    """With slow queries and small chunks, the first emit happens long before the last query."""
    job = uid_job([entry.uid for entry in catalog.series])
    fake = FakeNBIA(catalog, load=LoadModel(query_delay_s=0.2))
    first_emit: list[float] = []
    finished: list[float] = []

    async def emit(item: PlannedSeries) -> None:
        if not first_emit:
            first_emit.append(anyio.current_time())

    async with fake.serve() as server, NBIAClient(base_url=server.base_url) as client:
        planner = Planner(
            client,
            job,
            retry_policy=FAST,
            clock=SystemClock(),
            options=PlannerOptions(metadata_chunk=2, query_concurrency=1),
        )
        start = anyio.current_time()
        await planner.run(emit)
        finished.append(anyio.current_time())
    assert first_emit and first_emit[0] - start < (finished[0] - start) / 2


async def test_transient_query_errors_are_retried(tmp_path: Path, catalog: Catalog) -> None:
    job = uid_job([entry.uid for entry in catalog.series[:3]])
    fake = FakeNBIA(
        catalog, faults=FaultPlan(rules=[FaultRule(kind=FaultKind.SLOW_QUERY, times=1, delay_s=0.05)])
    )
    items, planner, _ = await plan_all(catalog, job, fake=fake)
    assert len(items) == 3 and not planner.summary.problems


async def test_real_2524_series_manifest_plans_completely(catalog: Catalog) -> None:
    manifest = read_manifest(MANIFESTS / "NBIA-Submission-Test-Data_2524series-56gbytes.tcia")
    seeded = Catalog.generate(
        seed=1,
        collections=2,
        instances_per_series=(1, 2),
        instance_bytes=(1000, 1000),
        extra_series_uids=manifest.uids,
    )
    job = JobSpec.from_uid_list(manifest)
    items, planner, _ = await plan_all(seeded, job)
    assert {item.series_uid for item in items} == set(manifest.uids)
    assert planner.summary.series == 2524
    named = set(manifest.uids)  # read once: each .uids reads the manifest again (issue 13)
    assert planner.summary.total_bytes == sum(
        entry.total_bytes for entry in seeded.series if entry.uid in named
    )


async def test_query_rows_flow_to_the_pool_one_at_a_time(tmp_path: Path, catalog: Catalog) -> None:
    """A query's rows are consumed as a stream: each series is handed on before the next row is read.

    The planner reads rows from one seam (``_query_rows``); here it yields the server's rows one
    by one and counts them, so holding the answer whole (or a list of planned series) would show
    as more rows read than series handed on.
    """
    read: list[str] = []
    handed: list[tuple[str, int]] = []

    class CountingPlanner(Planner):
        async def _query_rows(
            self, filters: Mapping[str, str], limiter: anyio.CapacityLimiter
        ) -> AsyncGenerator[SeriesRow | RejectedRow, None]:
            async for row in super()._query_rows(filters, limiter):
                assert isinstance(row, SeriesRow)  # the fake's rows all fit
                read.append(row.series_uid)
                yield row

    async def emit(item: PlannedSeries) -> None:
        handed.append((item.series_uid, len(read)))

    collection = catalog.collections[0]
    job = job_file(tmp_path, f'[[query]]\ncollection = "{collection}"\n')
    async with FakeNBIA(catalog).serve() as server, NBIAClient(base_url=server.base_url) as client:
        planner = CountingPlanner(client, job, retry_policy=FAST, clock=SystemClock())
        await planner.run(emit)
    expected = [entry.uid for entry in catalog.series if entry.collection == collection]
    assert sorted(read) == sorted(expected) and len(expected) > 2
    assert handed == [(uid, position + 1) for position, uid in enumerate(read)]
    assert planner.summary.series == len(expected)


async def test_a_large_query_answer_is_spooled_and_a_cut_answer_is_read_again(
    tmp_path: Path, catalog: Catalog
) -> None:
    """Rows past the in-memory share go through the temporary file, in order; a query whose answer
    breaks off mid-way is retried whole, and the rows it had already handed on are not planned twice."""
    from tcia_fetch.errors import RemoteProtocolError

    cuts: list[int] = []

    class CutOnce:
        def __init__(self, client: NBIAClient) -> None:
            self._client = client

        def __getattr__(self, name: str) -> object:
            return getattr(self._client, name)

        async def iter_series_rows(self, **filters: Unpack[SeriesFilters]) -> AsyncGenerator[Row, None]:
            count = 0
            async for row in self._client.iter_series_rows(**filters):
                count += 1
                if not cuts and count == 3:
                    cuts.append(count)
                    raise RemoteProtocolError("connection lost mid-answer")
                yield row

    items: list[PlannedSeries] = []

    async def emit(item: PlannedSeries) -> None:
        items.append(item)

    collection = catalog.collections[0]
    job = job_file(tmp_path, f'[[query]]\ncollection = "{collection}"\n')
    async with FakeNBIA(catalog).serve() as server, NBIAClient(base_url=server.base_url) as client:
        planner = Planner(
            CutOnce(client),  # type: ignore[arg-type]
            job,
            retry_policy=FAST,
            clock=SystemClock(),
            options=PlannerOptions(spool_memory_rows=2),
        )
        await planner.run(emit)
    expected = sorted(entry.uid for entry in catalog.series if entry.collection == collection)
    assert cuts == [3] and len(expected) > 3
    assert sorted(item.series_uid for item in items) == expected
    assert not planner.summary.query_errors
