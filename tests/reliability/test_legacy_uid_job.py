"""A job naming series UIDs must run against the legacy v2 API (credentials via the environment).

``getSeriesMetadata`` exists only in v4, so on a legacy base URL the planner looks bare UIDs up
one by one with ``getSeries?SeriesInstanceUID=`` (``PlannerOptions.bulk_metadata=False``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.faults import FAST_RETRY
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.testing import Catalog, FakeNBIA
from tests.engine.oracle import assert_destination

pytestmark = pytest.mark.anyio


async def test_uid_job_on_legacy_v2(
    tmp_path: Path, small_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCIA_FETCH_USERNAME", "legacy-user")
    monkeypatch.setenv("TCIA_FETCH_PASSWORD", "legacy-pw")
    uids = [entry.uid for entry in small_catalog.series[:3]]
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[series]\nuids = [{listed}]\n")
    fake = FakeNBIA(small_catalog, users={"legacy-user": "legacy-pw"})
    async with fake.serve() as server:
        report = await fetch(
            job, RunOptions(out=tmp_path / "out", base_url=server.legacy_base_url(2)), retry_policy=FAST_RETRY
        )
    assert report.exit_code == 0 and report.done == len(uids)
    assert_destination(tmp_path / "out", small_catalog, done=uids, absent=[])
