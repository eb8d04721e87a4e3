"""Issue 14 (item 2) through the real engine against the fake server's hostile modes.

Each bad series fails on its own with a reason that says why; the rest of the job is fetched;
nothing of the bad series is left in the destination; a failed attempt keeps no buffer alive
into the retry wait.
"""

from __future__ import annotations

import gc
import json
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest

import tcia_fetch.engine.worker as worker_module
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.errors import DiskFullError, TciaFetchError
from tcia_fetch.series.extract import SeriesExtractor
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule

from .oracle import assert_destination
from .test_run_faults import write_job

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=4, integrity_attempts=3, base_s=0.01, cap_s=0.05, floor_s=0.0)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(
        seed=12,
        collections=1,
        patients_per_collection=3,
        series_per_study=2,
        instances_per_series=(3, 5),
        instance_bytes=(3_000, 12_000),
    )


async def run_job(
    tmp_path: Path, catalog: Catalog, rules: list[FaultRule], *, clock: SystemClock | None = None
) -> tuple[Any, Path, list[str]]:
    """Run every catalog series; the report (or the fatal error), the destination, UIDs downloaded."""
    uids = [entry.uid for entry in catalog.series]
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    out = tmp_path / "out"
    async with fake.serve() as server:
        try:
            ended: Any = await fetch(
                write_job(tmp_path, uids),
                RunOptions(out=out, base_url=server.base_url),
                retry_policy=FAST,
                clock=clock,
            )
        except TciaFetchError as exc:
            ended = exc
        downloaded = [
            r.query.get("SeriesInstanceUID", "") for r in server.request_log if r.endpoint == "getImage"
        ]
    return ended, out, downloaded


class CheckingClock(SystemClock):
    """Counts the extractors still alive (after a full collection) whenever a worker waits."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[SeriesExtractor]] = []
        self.alive_during_waits: list[int] = []

    async def sleep(self, seconds: float) -> None:
        gc.collect()
        self.alive_during_waits.append(sum(1 for ref in self.refs if ref() is not None))
        await super().sleep(seconds)


async def test_md5_list_bomb_fails_that_series_only_and_nothing_outlives_an_attempt(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = CheckingClock()
    target = catalog.series[0].uid

    class TrackedExtractor(SeriesExtractor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.expectation.series_uid == target:  # the other series may be in flight
                clock.refs.append(weakref.ref(self))

    monkeypatch.setattr(worker_module, "SeriesExtractor", TrackedExtractor)
    rule = FaultRule(FaultKind.MD5_LIST_BOMB, series_uid=target, times=None, inflated_bytes=256 << 20)
    report, out, downloaded = await run_job(tmp_path, catalog, [rule], clock=clock)
    assert report.exit_code == 1
    assert [(f.series_uid, f.reference) for f in report.failures] == [(target, "archive-too-large")]
    assert "md5hashes.csv" in report.failures[0].reason
    assert report.failures[0].attempts == 3  # retried like any integrity failure, each cut short
    assert downloaded.count(target) == 3
    others = [entry.uid for entry in catalog.series[1:]]
    assert report.done == len(others)
    assert_destination(out, catalog, done=others, absent=[target])
    # Every wait (the two retry waits included) found no extractor of the bombed series alive.
    assert len(clock.alive_during_waits) >= 2
    assert set(clock.alive_during_waits) == {0}


async def test_implausible_claims_fail_and_an_unfit_claim_ends_the_run_after_the_rest(
    tmp_path: Path, catalog: Catalog
) -> None:
    """Implausible figures: per-series failures. A plausible claim beyond the free space: set
    aside unstarted, the rest fetched, then the run ends as a full disk does (exit 3)."""
    many, huge, big = (entry.uid for entry in catalog.series[:3])
    free = shutil.disk_usage(tmp_path).free
    assert free < (3 << 40), "this test needs a claim beyond the free space that is still plausible"
    rules = [
        FaultRule(FaultKind.CLAIM_FIGURES, series_uid=many, times=None),  # 6,000,000 images
        FaultRule(
            FaultKind.CLAIM_FIGURES, series_uid=huge, times=None, image_count=None, total_bytes=1 << 60
        ),
        FaultRule(
            FaultKind.CLAIM_FIGURES,
            series_uid=big,
            times=None,
            image_count=None,
            total_bytes=free + (1 << 30),
        ),
    ]
    ended, out, downloaded = await run_job(tmp_path, catalog, rules)
    assert isinstance(ended, DiskFullError) and ended.exit_code == 3
    assert big in ended.message and "free space" in ended.message
    assert not {many, huge, big} & set(downloaded)  # refused before a single request
    report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
    failed = {f["SeriesInstanceUID"]: f for f in report["failures"]}
    assert {uid: f["reference"] for uid, f in failed.items()} == {
        many: "implausible-figures",
        huge: "implausible-figures",
    }
    assert "6,000,000 instances" in failed[many]["reason"]
    assert "1,152,921,504,606,846,976 bytes" in failed[huge]["reason"]
    assert big in report["fatal_error"]
    others = [entry.uid for entry in catalog.series[3:]]
    assert others and report["done"] == len(others)
    assert_destination(out, catalog, done=others, absent=[many, huge, big])
