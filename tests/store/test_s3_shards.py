"""Shards on a bucket (per-shard locks in the bucket home) and the streamed archive upload.

Against moto's S3 server on loopback, started here. Each test checks the end state a data-lake
user sees: which keys exist, open multipart uploads, the state objects, who is refused and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from tcia_fetch.cli.inspect import status
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.errors import DestinationBusyError
from tcia_fetch.plan.shard import Shard
from tcia_fetch.store._objstore import open_object_store
from tcia_fetch.store.location import BucketLocation
from tcia_fetch.store.objhome import BucketDestination
from tcia_fetch.testing import Catalog, FakeNBIA
from tcia_fetch.testing.s3 import MotoS3, list_keys, open_uploads

FAST = RetryPolicy(attempts=4, integrity_attempts=3, base_s=0.01, cap_s=0.05, floor_s=0.0)
_names = iter(range(10_000))


@pytest.mark.anyio
async def test_two_shards_fill_one_bucket_side_by_side_each_with_its_report(
    tmp_path: Path, moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog.generate(
        seed=31, collections=1, patients_per_collection=3, series_per_study=2,
        instances_per_series=(3, 5), instance_bytes=(6_000, 14_000),
    )  # fmt: skip
    uids = [series.uid for series in catalog.series]
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{u}"' for u in uids)
    job.write_text(f"[download]\nconcurrency = 4\n[series]\nuids = [{listed}]\n")
    reports: dict[int, Any] = {}
    async with FakeNBIA(catalog).serve() as server:

        async def shard(index: int) -> None:
            options = RunOptions(
                out=f"s3://{bucket}/lake", base_url=server.base_url, keep="tar.zst", layout="flat",
                shard=f"{index}/2",
            )  # fmt: skip
            reports[index] = await fetch(job, options, retry_policy=FAST)

        async with anyio.create_task_group() as group:  # both shards at once, one bucket
            group.start_soon(shard, 0)
            group.start_soon(shard, 1)
    assert sum(report.done for report in reports.values()) == len(uids)
    assert all(report.exit_code == 0 and report.failed == 0 for report in reports.values())
    for index, report in reports.items():  # each did its own share only
        assert report.done == sum(Shard(index, 2).owns(uid) for uid in uids)
    client = moto_s3.client()
    keys = list_keys(client, bucket)
    archives = {key for key in keys if key.endswith(".tar.zst")}
    assert archives == {f"lake/{uid}/{uid}.tar.zst" for uid in uids}
    state = {key.removeprefix("lake/.tcia-fetch/") for key in keys if key.startswith("lake/.tcia-fetch/")}
    for index in (0, 1):
        assert {f"last-report.shard-{index}-of-2.json", f"last-plan.shard-{index}-of-2.json"} <= state
        assert f"lock.shard-{index}-of-2" not in state  # released
    assert open_uploads(client, bucket) == []
    # A rerun of one shard finds its share done and fetches nothing.
    async with FakeNBIA(catalog).serve() as server:
        again = await fetch(
            job,
            RunOptions(out=f"s3://{bucket}/lake", base_url=server.base_url, keep="tar.zst", shard="1/2"),
            retry_policy=FAST,
        )
    assert (again.done, again.failed) == (0, 0)
    # `status` of the bucket shows each shard, as it does for a directory, and who runs one now.
    shares = {index: sum(Shard(index, 2).owns(uid) for uid in uids) for index in (0, 1)}
    document = await anyio.to_thread.run_sync(bucket_status, bucket, "--format", "json")
    assert (document["done"], document["pending"], document["failed"]) == (len(uids), 0, 0)
    assert [
        (row["shard"], row["state"], row["planned"], row["done"], row["pending"])
        for row in document["shards"]
    ] == [
        ("0/2", "done", shares[0], shares[0], 0),
        ("1/2", "done", shares[1], shares[1], 0),
    ]
    home = BucketDestination(
        BucketLocation(bucket, "lake"), work_dir=tmp_path / "w", policy=FAST, shard=Shard(1, 2)
    )
    lock = await anyio.to_thread.run_sync(home.acquire_lock, "shard-one-again")
    try:
        document = await anyio.to_thread.run_sync(bucket_status, bucket, "--format", "json")
        table = await anyio.to_thread.run_sync(bucket_status, bucket)
    finally:
        await anyio.to_thread.run_sync(lock.release)
        await anyio.to_thread.run_sync(home.close)
    running = document["shards"][1]
    assert (running["state"], running["done"]) == ("running", shares[1])
    assert f"pid {os.getpid()}" in running["holder"]
    assert "shards (2)" in table and "running" in table


def bucket_status(bucket: str, *args: str) -> Any:
    """``tcia-fetch status s3://BUCKET/lake`` in this process (the environment points at moto)."""
    result = CliRunner().invoke(status, [f"s3://{bucket}/lake", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "json" in args else result.output


def test_bucket_shard_locks_mix_like_the_directory_ones(bucket: str, tmp_path: Path) -> None:
    location = BucketLocation(bucket, "lake")
    homes: list[BucketDestination] = []

    def home(shard: Shard | None) -> BucketDestination:
        made = BucketDestination(location, work_dir=tmp_path / f"w{len(homes)}", policy=FAST, shard=shard)
        homes.append(made)
        return made

    try:
        first = home(Shard(0, 2)).acquire_lock("first")
        second = home(Shard(1, 2)).acquire_lock("second")  # shards of one split run side by side
        with pytest.raises(DestinationBusyError, match="run first"):
            home(Shard(0, 2)).acquire_lock("again")  # the same shard twice: who holds it
        with pytest.raises(DestinationBusyError, match="whole-job run waits"):
            home(None).acquire_lock("whole")
        with pytest.raises(DestinationBusyError, match="split into 2, not 3"):
            home(Shard(2, 3)).acquire_lock("other-n")
        first.release()
        second.release()
        whole = home(None).acquire_lock("whole")
        with pytest.raises(DestinationBusyError, match="whole-job run"):
            home(Shard(1, 2)).acquire_lock("late-shard")
        whole.release()
        assert homes[0].live_locks() == []  # every refused run let go of the lock it took
    finally:
        for made in homes:
            made.close()


def test_a_streamed_object_is_invisible_until_committed_and_holds_at_most_a_part(
    bucket: str, moto_s3: MotoS3
) -> None:
    store = open_object_store(BucketLocation(bucket, ""), policy=FAST)
    client = moto_s3.client()
    try:
        part = store.aio.stream_part_bytes  # 8 KiB in tests (TCIA_FETCH_S3_PART_BYTES)
        payload = bytes(range(256)) * (part * 5 // 256 + 3)
        stream = store.aio.stream("a/series.tar.zst")
        peak = 0
        for start in range(0, len(payload), 1000):
            stream.write(payload[start : start + 1000])
            store.call(stream.drain)
            peak = max(peak, stream.buffered)
        assert peak < part + 1000  # a part filling, plus one write
        assert open_uploads(client, bucket) == ["a/series.tar.zst"]  # parts went up meanwhile...
        assert store.head("a/series.tar.zst") is None  # ...and nothing is visible under the key
        store.call(stream.commit)
        assert store.get("a/series.tar.zst") == payload
        assert open_uploads(client, bucket) == []
        # Given up (a series that failed to verify): nothing visible, no upload left open.
        failed = store.aio.stream("a/failed.zip")
        failed.write(payload)
        store.call(failed.drain)
        store.call(failed.abort)
        assert store.head("a/failed.zip") is None
        assert open_uploads(client, bucket) == []
        # Smaller than a part: one PUT at commit, no multipart upload at all.
        small = store.aio.stream("a/small.zip")
        small.write(b"tiny")
        store.call(small.drain)
        assert open_uploads(client, bucket) == []
        store.call(small.commit)
        assert store.get("a/small.zip") == b"tiny"
    finally:
        store.close()
