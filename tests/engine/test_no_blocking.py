"""The engine never blocks its event loop: file and disk work goes through worker threads.

blockbuster makes blocking calls (file I/O, sleeps, os.* file operations) raise when they run on
the event loop's thread. The fake server is a separate process here, so only the client's own
calls are watched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.job.jobfile import JobSpec, UidOrigin
from tcia_fetch.testing import Catalog

from ..e2e.fixtures import fake_server_process

pytestmark = pytest.mark.anyio

SIZING = [
    "--seed",
    "8",
    "--collections",
    "1",
    "--patients-per-collection",
    "2",
    "--series-per-study",
    "2",
    "--instances-per-series",
    "2,4",
    "--instance-bytes",
    "5000,9000",
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with fake_server_process(tmp_path, SIZING) as url:
        yield url


async def test_a_whole_run_makes_no_blocking_call_on_the_event_loop(tmp_path: Path, server: str) -> None:
    catalog = Catalog.generate(
        seed=8,
        collections=1,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(2, 4),
        instance_bytes=(5000, 9000),
    )
    job = JobSpec.for_uids([UidOrigin(entry.uid, "test") for entry in catalog.series])
    with blockbuster_ctx():
        report = await fetch(
            job,
            RunOptions(out=tmp_path / "out", base_url=server),
            retry_policy=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.01, floor_s=0.0),
        )
    assert report.exit_code == 0 and report.done == len(catalog.series)


async def test_an_s3_run_with_tar_zst_makes_no_blocking_call_on_the_event_loop(
    tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tcia_fetch.testing.s3 import MotoS3, list_keys, s3_env

    catalog = Catalog.generate(
        seed=8,
        collections=1,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(2, 4),
        instance_bytes=(5000, 9000),
    )
    moto = MotoS3()
    try:
        moto.client().create_bucket(Bucket="no-blocking")
        for key, value in s3_env(moto.endpoint, tmp_path / "work", tmp_path).items():
            monkeypatch.setenv(key, value)
        job = JobSpec.for_uids([UidOrigin(entry.uid, "test") for entry in catalog.series])
        with blockbuster_ctx():
            report = await fetch(
                job,
                RunOptions(out="s3://no-blocking/p", base_url=server, keep="tar.zst"),
                retry_policy=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.01, floor_s=0.0),
            )
        assert report.exit_code == 0 and report.done == len(catalog.series)
        archives = [key for key in list_keys(moto.client(), "no-blocking") if key.endswith(".tar.zst")]
        assert len(archives) == len(catalog.series)
    finally:
        moto.stop()
