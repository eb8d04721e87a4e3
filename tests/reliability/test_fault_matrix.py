"""One test per fault of the issue's matrix, each judged on its end state (reliability.md §3.1).

Every row runs the real engine against the fake server and asserts: the series ends verified
byte-exact on disk (retryable faults) or reported with the right reason and never published
(persistent or permanent faults); no download starts before a Retry-After expires; requests stay
bounded; no data is lost (oracle figures all 0). Auth, DNS and refused connections follow.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import anyio
import pytest

from tcia_fetch.campaign.faults import (
    FAST_RETRY,
    SCENARIOS,
    FaultScenario,
    download_requests,
    politeness_violations,
    run_scenario,
)
from tcia_fetch.campaign.oracle import judge_destination, published_series
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.testing import Catalog, FakeNBIA, LoadModel, RequestRecord
from tests.engine.oracle import assert_destination

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
async def test_fault_ends_in_its_promised_state(
    tmp_path: Path, small_catalog: Catalog, scenario: FaultScenario
) -> None:
    outcome = await run_scenario(scenario, small_catalog, tmp_path)
    assert outcome.faults_injected >= 1
    assert outcome.problems == []
    assert outcome.loss.counts() == dict.fromkeys(outcome.loss.counts(), 0)
    uids = [entry.uid for entry in small_catalog.series[:3]]
    target = uids[0]
    if scenario.expect == "verified":
        assert_destination(tmp_path / "out", small_catalog, done=uids, absent=[])
    else:
        assert_destination(tmp_path / "out", small_catalog, done=uids[1:], absent=[target])


async def test_retry_after_pauses_every_worker_not_only_the_throttled_one(
    tmp_path: Path, small_catalog: Catalog
) -> None:
    scenario = next(s for s in SCENARIOS if s.name == "429 Retry-After seconds")
    outcome = await run_scenario(scenario, small_catalog, tmp_path, series_count=6)
    downloads = download_requests(outcome.requests)
    throttled = next(r for r in downloads if r.status == 429)
    answered = throttled.started_at + throttled.duration_s
    after = [r for r in downloads if r.started_at > answered + 0.05]
    assert after, "nothing was downloaded after the 429"
    assert min(r.started_at for r in after) >= answered + 1.0 - 0.05
    assert outcome.survived, outcome.problems


def _write_query_job(path: Path, collection: str, concurrency: int) -> Path:
    path.write_text(
        f"[download]\nconcurrency = {concurrency}\nstall_timeout_s = 2\n"
        f'[[query]]\ncollection = ["{collection}"]\n'
    )
    return path


async def test_legacy_401_refreshes_the_token_once_for_eight_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog.generate(
        seed=5,
        collections=1,
        patients_per_collection=4,
        series_per_study=4,
        instances_per_series=(2, 3),
        instance_bytes=(4_000, 9_000),
    )
    monkeypatch.setenv("TCIA_FETCH_USERNAME", "reliability")
    monkeypatch.setenv("TCIA_FETCH_PASSWORD", "pw-for-the-401-test")
    fake = FakeNBIA(
        catalog,
        users={"reliability": "pw-for-the-401-test"},
        load=LoadModel(bytes_per_s_per_connection=40_000),
    )
    out = tmp_path / "out"
    job = _write_query_job(tmp_path / "job.toml", catalog.series[0].collection, concurrency=8)
    grants_at_expiry: list[int] = []
    async with fake.serve() as server:

        async def expire_mid_run() -> None:
            # The fake's log and counters offer no event to wait on: poll them.
            while not any(r.endpoint.startswith("getImage") and r.status == 200 for r in server.request_log):  # noqa: ASYNC110
                await anyio.sleep(0.01)
            while server.stats().active_downloads < 2:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            stats = server.stats()
            grants_at_expiry.append(stats.token_grants + stats.token_refreshes)
            fake.expire_tokens()

        async with anyio.create_task_group() as group:
            group.start_soon(expire_mid_run)
            report = await fetch(
                job, RunOptions(out=out, base_url=server.legacy_base_url(2)), retry_policy=FAST_RETRY
            )
            group.cancel_scope.cancel()
        stats = server.stats()
        unauthorized = [r for r in server.request_log if r.status == 401]
    assert grants_at_expiry, "the run ended before the token could be expired"
    assert report.exit_code == 0 and report.done == len(catalog.series)
    assert unauthorized, "no request met the expired token"
    assert stats.token_grants + stats.token_refreshes - grants_at_expiry[0] == 1
    assert_destination(out, catalog, done=[e.uid for e in catalog.series], absent=[])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("base_url", "reference", "words"),
    [
        ("http://tcia-fetch-no-such-host.invalid/nbia-api/services/v4/", "dns-failed", "cannot resolve host"),
        (None, "connect-failed", "cannot connect"),
    ],
    ids=["dns-failure", "connection-refused"],
)
async def test_unreachable_server_is_reported_clearly_and_quickly(
    tmp_path: Path, small_catalog: Catalog, base_url: str | None, reference: str, words: str
) -> None:
    url = base_url or f"http://127.0.0.1:{_free_port()}/nbia-api/services/v4/"
    uids = [entry.uid for entry in small_catalog.series[:3]]
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[series]\nuids = [{listed}]\n")
    started = time.monotonic()
    report = await fetch(job, RunOptions(out=tmp_path / "out", base_url=url), retry_policy=FAST_RETRY)
    assert time.monotonic() - started < 20
    assert report.exit_code != 0 and report.done == 0
    assert {f.series_uid for f in report.failures} == set(uids)
    for failure in report.failures:
        assert failure.reference == reference
        assert words in failure.reason
        host = url.split("/")[2].split(":")[0]
        assert host in failure.reason
    assert published_series(tmp_path / "out") == {}
    assert judge_destination(tmp_path / "out", small_catalog, planned=uids, reported=uids).total == 0


async def test_long_outage_makes_no_retry_storm_and_a_rerun_resumes(
    tmp_path: Path, small_catalog: Catalog
) -> None:
    """A server failing every request for longer than the run is willing to watch: the breaker
    holds the request count down; after an interruption, a rerun against the recovered server
    finishes the job with nothing lost."""
    from tcia_fetch.testing import FaultKind, FaultPlan, FaultRule

    uids = [entry.uid for entry in small_catalog.series[:4]]
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[download]\nconcurrency = 4\n[series]\nuids = [{listed}]\n")
    out = tmp_path / "out"
    window_s = 8.0
    down = FakeNBIA(small_catalog, faults=FaultPlan(rules=[FaultRule(FaultKind.BAD_GATEWAY, times=None)]))
    async with down.serve() as server:
        with anyio.move_on_after(window_s):
            await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=FAST_RETRY)
    attempts = download_requests(down.request_log)
    # Without a breaker, fast retries would send attempts x series requests at once and keep
    # failing series; with it, a handful open it and then one probe per open period goes out.
    assert 1 <= len(attempts) <= 12, [round(r.started_at - attempts[0].started_at, 2) for r in attempts]
    assert published_series(out) == {}
    async with FakeNBIA(small_catalog).serve() as server:
        second = await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=FAST_RETRY)
    assert second.exit_code == 0 and second.done + second.skipped == len(uids)
    assert_destination(out, small_catalog, done=uids, absent=[])
    assert judge_destination(out, small_catalog, planned=uids, reported=[]).total == 0
    assert os.listdir(out / ".tcia-fetch" / "staging") == []


async def test_unknown_series_is_reported_once_and_never_downloaded(
    tmp_path: Path, small_catalog: Catalog
) -> None:
    unknown = "1.2.826.0.1.3680043.8.498.999999999999"
    known = [entry.uid for entry in small_catalog.series[:2]]
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in [unknown, *known])
    job.write_text(f"[series]\nuids = [{listed}]\n")
    fake = FakeNBIA(small_catalog)
    async with fake.serve() as server:
        report = await fetch(
            job, RunOptions(out=tmp_path / "out", base_url=server.base_url), retry_policy=FAST_RETRY
        )
    assert report.exit_code == 1 and report.done == 2
    [failure] = report.failures
    assert failure.series_uid == unknown and failure.reason
    assert download_requests(fake.request_log, unknown) == []
    assert_destination(tmp_path / "out", small_catalog, done=known, absent=[unknown])


def _download(uid: str, status: int, started_at: float) -> RequestRecord:
    query = {"SeriesInstanceUID": uid}
    return RequestRecord(
        method="GET",
        path="/nbia-api/services/v4/getImage",
        query=query,
        query_items=tuple(query.items()),
        form_items=(),
        headers={},
        status=status,
        started_at=started_at,
        duration_s=0.01,
    )


def test_politeness_check_judges_the_throttled_series_exactly_and_neighbours_with_room() -> None:
    # The throttled series' own next request is caused by the 429: any start inside the window
    # breaks the Retry-After. Another series' request may have been sent before the 429 reached
    # the client and logged late by a busy server: only a start well after the answer counts.
    throttled = [_download("A", 429, 10.0)]
    early_retry = [*throttled, _download("A", 200, 10.03)]
    late_logged_neighbour = [*throttled, _download("B", 200, 10.2)]
    neighbour_inside = [*throttled, _download("B", 200, 10.7)]
    after_the_window = [*throttled, _download("A", 200, 11.02), _download("B", 200, 11.05)]

    def judge(requests: list[RequestRecord]) -> list[str]:
        return politeness_violations(requests, retry_after_s=1.0, http_date=False, wall_minus_monotonic=0.0)

    assert len(judge(early_retry)) == 1
    assert judge(late_logged_neighbour) == []
    assert len(judge(neighbour_inside)) == 1
    assert judge(after_the_window) == []
