"""Every fault the fake server can inject, run through the real engine, judged by the oracle.

Retryable faults must end verified on disk; the others must end reported with the right
reason; none may leave anything in the destination that looks finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, RunningServer

from .oracle import assert_destination

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=4, integrity_attempts=3, base_s=0.01, cap_s=0.05, floor_s=0.0)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(
        seed=11,
        collections=2,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(3, 6),
        instance_bytes=(4_000, 30_000),
    )


def write_job(tmp_path: Path, uids: list[str], *, extra: str = "") -> Path:
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(
        f"[download]\nconcurrency = 3\nstall_timeout_s = 1\n{extra}\n[series]\nuids = [{listed}]\n"
    )
    return job


@dataclass
class Outcome:
    report: Any
    out: Path
    server: RunningServer


async def run_with(
    tmp_path: Path, catalog: Catalog, rules: list[FaultRule], uids: list[str], **fake_kwargs: Any
) -> Outcome:
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules), **fake_kwargs)
    out = tmp_path / "out"
    async with fake.serve() as server:
        report = await fetch(
            write_job(tmp_path, uids), RunOptions(out=out, base_url=server.base_url), retry_policy=FAST
        )
        return Outcome(report, out, server)


RETRYABLE = [
    (FaultKind.RATE_LIMIT, {"retry_after": "0"}),
    (FaultKind.SERVER_ERROR, {}),
    (FaultKind.UNAVAILABLE, {}),
    (FaultKind.CUT, {"after_bytes": 3000}),
    (FaultKind.STALL, {"stall_s": 3.0}),
    (FaultKind.SHORT_ZIP, {"missing": 1}),
    (FaultKind.WRONG_MD5, {}),
    (FaultKind.FLIP_BYTE, {}),
    (FaultKind.HTML_200, {}),
    (FaultKind.EMPTY_200, {}),
]


@pytest.mark.parametrize(("kind", "params"), RETRYABLE, ids=[k.name for k, _ in RETRYABLE])
async def test_transient_fault_ends_verified(
    tmp_path: Path, catalog: Catalog, kind: FaultKind, params: dict[str, Any]
) -> None:
    target = catalog.series[0].uid
    other = catalog.series[1].uid
    outcome = await run_with(
        tmp_path, catalog, [FaultRule(kind=kind, series_uid=target, times=1, **params)], [target, other]
    )
    assert outcome.report.failed == 0, outcome.report.failures
    assert outcome.report.done == 2
    assert outcome.report.exit_code == 0
    assert outcome.report.retries >= 1
    assert_destination(outcome.out, catalog, done=[target, other], absent=[])


PERSISTENT = [
    (FaultKind.SHORT_ZIP, {"missing": 1}, "count-mismatch"),
    (FaultKind.WRONG_MD5, {}, "md5-mismatch"),
    (FaultKind.FLIP_BYTE, {}, "archive-corrupt"),
    (FaultKind.HTML_200, {}, "not-an-archive"),
    (FaultKind.EMPTY_200, {}, "not-an-archive"),
    (FaultKind.SERVER_ERROR, {}, "server-error"),
    (FaultKind.CUT, {"after_bytes": 3000}, "connection-cut"),
]


@pytest.mark.parametrize(("kind", "params", "reference"), PERSISTENT, ids=[k.name for k, _, _ in PERSISTENT])
async def test_persistent_fault_is_reported_and_never_published(
    tmp_path: Path, catalog: Catalog, kind: FaultKind, params: dict[str, Any], reference: str
) -> None:
    target = catalog.series[0].uid
    other = catalog.series[1].uid
    outcome = await run_with(
        tmp_path, catalog, [FaultRule(kind=kind, series_uid=target, times=1000, **params)], [target, other]
    )
    assert outcome.report.exit_code == 1
    assert [(f.series_uid, f.reference) for f in outcome.report.failures] == [(target, reference)]
    assert_destination(outcome.out, catalog, done=[other], absent=[target])


async def test_zip_slip_is_rejected_once_and_not_retried(tmp_path: Path, catalog: Catalog) -> None:
    target = catalog.series[0].uid
    outcome = await run_with(
        tmp_path, catalog, [FaultRule(kind=FaultKind.ZIP_SLIP, series_uid=target, times=1000)], [target]
    )
    [failure] = outcome.report.failures
    assert failure.reference == "unsafe-archive"
    assert failure.attempts == 1
    assert not (tmp_path / "evil.dcm").exists()
    assert not list(tmp_path.rglob("evil.dcm"))  # noqa: ASYNC240
    assert_destination(outcome.out, catalog, done=[], absent=[target])


async def test_server_lying_about_size_is_reported(tmp_path: Path, catalog: Catalog) -> None:
    target = catalog.series[0].uid
    outcome = await run_with(
        tmp_path,
        catalog,
        [FaultRule(kind=FaultKind.WRONG_SIZE, series_uid=target, times=1000, delta_bytes=7)],
        [target],
    )
    [failure] = outcome.report.failures
    assert failure.reference == "size-mismatch"
    assert_destination(outcome.out, catalog, done=[], absent=[target])


async def test_rejected_and_restricted_series_are_reported_not_retried(
    tmp_path: Path, catalog: Catalog
) -> None:
    rejected, restricted, good = (entry.uid for entry in catalog.series[:3])
    outcome = await run_with(
        tmp_path,
        catalog,
        [FaultRule(kind=FaultKind.REQUEST_REJECTED, series_uid=rejected, times=1000)],
        [rejected, restricted, good],
        restricted_series=frozenset({restricted}),
    )
    references = {f.series_uid: (f.reference, f.attempts) for f in outcome.report.failures}
    assert references[rejected] == ("series-unavailable", 1)
    assert references[restricted][0] == "series-unavailable"
    assert outcome.report.done == 1
    assert_destination(outcome.out, catalog, done=[good], absent=[rejected, restricted])


async def test_slow_queries_still_plan_and_download(tmp_path: Path, catalog: Catalog) -> None:
    uids = [entry.uid for entry in catalog.series[:3]]
    outcome = await run_with(
        tmp_path, catalog, [FaultRule(kind=FaultKind.SLOW_QUERY, times=1000, delay_s=0.3)], uids
    )
    assert outcome.report.done == 3
    assert_destination(outcome.out, catalog, done=uids, absent=[])


async def test_rerun_skips_everything_and_makes_no_download(tmp_path: Path, catalog: Catalog) -> None:
    uids = [entry.uid for entry in catalog.series]
    fake = FakeNBIA(catalog)
    out = tmp_path / "out"
    job = write_job(tmp_path, uids)
    async with fake.serve() as server:
        first = await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=FAST)
        downloads_before = sum(1 for r in server.request_log if "getImage" in r.path)
        second = await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=FAST)
        downloads_after = sum(1 for r in server.request_log if "getImage" in r.path)
    assert first.done == len(uids) and first.exit_code == 0
    assert second.done == 0 and second.skipped == len(uids) and second.exit_code == 0
    assert downloads_after == downloads_before
    assert_destination(out, catalog, done=uids, absent=[])
    assert (out / "metadata.csv").read_text().count("\n") == len(uids) + 1


async def test_server_without_include_md5_falls_back_to_md5_endpoint(
    tmp_path: Path, catalog: Catalog
) -> None:
    """An older NBIA refuses IncludeMD5 on getImage; MD5s then come from getImageWithMD5Hash."""
    uids = [entry.uid for entry in catalog.series[:3]]
    fake = FakeNBIA(catalog, include_md5_supported=False)
    out = tmp_path / "out"
    async with fake.serve() as server:
        report = await fetch(
            write_job(tmp_path, uids), RunOptions(out=out, base_url=server.base_url), retry_policy=FAST
        )
        endpoints = [record.endpoint for record in server.request_log]
    assert report.exit_code == 0 and report.done == 3
    assert endpoints.count("getImageWithMD5Hash") == 3
    # each series is refused at most once (workers in flight when the first refusal arrives)
    assert 1 <= endpoints.count("getImage") <= len(uids)
    assert_destination(out, catalog, done=uids, absent=[])
