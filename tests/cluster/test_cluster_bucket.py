"""A Dask run (``--scheduler``) onto an ``s3://bucket/prefix``: the end state, the probe, adoption.

Against moto's S3 server on loopback, started here. The local cluster's worker processes are
forked from a forkserver, whose environment is the one it started with: the forkserver is
restarted once the test's AWS environment is set, so that the workers reach moto with the
canary credentials from their own environment (as real workers read theirs), never from a task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.errors import DestinationError
from tcia_fetch.store.journal import SEGMENT_DIR, SNAPSHOT_NAME
from tcia_fetch.store.location import BucketLocation
from tcia_fetch.store.objhome import BucketDestination
from tcia_fetch.store.records import FileEntry
from tcia_fetch.testing.s3 import CANARY_KEY_ID, CANARY_SECRET, MotoS3, list_keys, open_uploads

FAST = RetryPolicy(attempts=3, integrity_attempts=3, base_s=0.01, cap_s=0.05, floor_s=0.0)
_names = iter(range(10_000))


def _restart_forkserver() -> None:
    """Local workers fork from the forkserver and get ITS environment: start it afresh now."""
    import multiprocessing.forkserver

    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]


@pytest.fixture
def fresh_workers(bucket: str) -> Iterator[None]:
    _restart_forkserver()
    yield
    _restart_forkserver()  # later tests must not inherit this test's environment


def _catalog() -> Any:
    from tcia_fetch.testing import Catalog

    return Catalog.generate(
        seed=41, collections=1, patients_per_collection=3, series_per_study=2,
        instances_per_series=(3, 5), instance_bytes=(6_000, 14_000),
    )  # fmt: skip


def _cli(command: Any, *args: str) -> Any:
    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.e2e
def test_a_dask_run_fills_a_bucket_like_one_process_and_a_rerun_fetches_nothing(
    tmp_path: Path, moto_s3: MotoS3, bucket: str, fresh_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tcia_fetch.campaign.process import serve_in_thread
    from tcia_fetch.cli.inspect import status, verify
    from tcia_fetch.cluster.runner import run_on_cluster
    from tcia_fetch.engine.run import RunOptions, fetch
    from tcia_fetch.testing import FakeNBIA

    catalog = _catalog()
    uids = sorted(series.uid for series in catalog.series)
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[download]\nconcurrency = 3\n[series]\nuids = [{listed}]\n")
    client = moto_s3.client()
    with serve_in_thread(FakeNBIA(catalog)) as server:
        options = RunOptions(
            out=f"s3://{bucket}/lake", base_url=server.base_url, keep="tar.zst", layout="flat"
        )
        report = run_on_cluster(job, options, "local:2")
        assert (report.exit_code, report.done, report.failed) == (0, len(uids), 0)
        assert report.engine["workers"] == 2
        single = RunOptions(out=f"s3://{bucket}/one", base_url=server.base_url, keep="tar.zst", layout="flat")
        one = anyio.run(lambda: fetch(job, single))
        assert (one.done, one.failed) == (len(uids), 0)

        keys = list_keys(client, bucket)
        lake = {k.removeprefix("lake/"): size for k, size in keys.items() if k.startswith("lake/")}
        alone = {k.removeprefix("one/"): size for k, size in keys.items() if k.startswith("one/")}
        archives = {k: size for k, size in lake.items() if not k.startswith(".tcia-fetch/")}
        # The keys a single-process run produces (each series once, one archive). (Not the same
        # bytes: an archive holds its members' times, metadata.csv its download times.)
        assert set(archives) == {k for k in alone if not k.startswith(".tcia-fetch/")}
        assert sorted(k for k in archives if k.endswith(".tar.zst")) == sorted(
            f"{uid}/{uid}.tar.zst" for uid in uids
        )
        assert "metadata.csv" in archives
        state = {k.removeprefix(".tcia-fetch/") for k in lake if k.startswith(".tcia-fetch/")}
        assert {"last-report.json", "last-plan.json", f"reports/{report.run_id}.json"} <= state
        # The journal: the workers' segments folded into the snapshot by the client's compaction.
        assert SNAPSHOT_NAME in state and not any(name.startswith(SEGMENT_DIR) for name in state), state
        assert "lock" not in state  # released
        assert not any("cluster-probe" in name for name in state)  # probes removed
        assert open_uploads(client, bucket) == []
        # No credential in what the run wrote (its report quotes the destination and the workers).
        written = client.get_object(Bucket=bucket, Key="lake/.tcia-fetch/last-report.json")["Body"].read()
        assert CANARY_SECRET.encode() not in written and CANARY_KEY_ID.encode() not in written
        csv_text = client.get_object(Bucket=bucket, Key="lake/metadata.csv")["Body"].read().decode()
        assert all(uid in csv_text for uid in uids)
        # Workers' work dirs are theirs, and go with them; the client's stays.
        assert list((tmp_path / "work").glob("*/dask-*")) == []

        document = _cli(status, f"s3://{bucket}/lake", "--format", "json")
        assert (document["done"], document["pending"], document["failed"]) == (len(uids), 0, 0)
        checked = _cli(verify, f"s3://{bucket}/lake", "--format", "json")
        assert (checked["checked"], checked["damaged_count"]) == (len(uids), 0), checked

        # Nothing left to download: the rerun plans, skips everything and starts no cluster.
        again = run_on_cluster(job, options, "local:2")
        assert (again.done, again.skipped, again.failed) == (0, len(uids), 0)
        assert again.engine["workers"] == 0
    assert {k: v for k, v in list_keys(client, bucket, "lake/").items() if "/.tcia-fetch/" not in k} == {
        f"lake/{k}": v for k, v in archives.items()
    }


# --- the shared-destination probe ------------------------------------------------------------------


def _home(bucket: str, tmp_path: Path, prefix: str = "lake") -> BucketDestination:
    home = BucketDestination(BucketLocation(bucket, prefix), work_dir=tmp_path / "client", policy=FAST)
    home.prepare()
    return home


def test_the_bucket_probe_tells_the_clients_bucket_from_another(bucket: str, tmp_path: Path) -> None:
    from tcia_fetch.cluster.remote import probe_bucket

    home = _home(bucket, tmp_path)
    url = f"s3://{bucket}/lake"
    try:

        def probe(where: str, nonce: str) -> str | None:
            return anyio.run(probe_bucket, where, "probe-1", nonce, FAST)

        assert "does not exist here" in str(probe(url, "n1"))
        home.state.write("probe-1", b"other")
        assert "holds something else" in str(probe(url, "n1"))
        assert "does not exist here" in str(probe(f"s3://{bucket}/elsewhere", "n1"))
        home.state.write("probe-1", b"n1")
        assert probe(url, "n1") is None
        replies = [name for name in home.state.list("probe-1.") if name != "probe-1"]
        assert len(replies) == 1 and home.state.read(replies[0]) == b"n1"
    finally:
        home.close()


def test_the_bucket_probe_says_when_a_worker_cannot_reach_the_endpoint(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tcia_fetch.cluster.remote import probe_bucket

    home = _home(bucket, tmp_path)
    try:
        home.state.write("probe-2", b"n2")
        # This worker's environment points elsewhere (nothing listens there; moto takes any key,
        # so a refused credential cannot be shown here).
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        answer = anyio.run(probe_bucket, f"s3://{bucket}/lake", "probe-2", "n2", FAST)
        assert answer is not None and f"s3://{bucket}/lake/.tcia-fetch/probe-2" in answer, answer
        assert CANARY_SECRET not in answer and CANARY_KEY_ID not in answer
    finally:
        home.close()


class _TwoBucketWorkers:
    """A cluster stand-in: one worker reaches the client's bucket, the other another prefix."""

    def __init__(self, elsewhere: str) -> None:
        self.elsewhere = elsewhere

    async def run_on_workers(
        self, function: Any, url: str, name: str, nonce: str, policy: Any
    ) -> dict[str, Any]:
        return {
            "tcp://node1:1": await function(url, name, nonce, policy),
            "tcp://node2:1": await function(self.elsewhere, name, nonce, policy),
        }


def test_a_bucket_not_reached_alike_by_every_worker_stops_the_run_naming_the_worker(
    bucket: str, tmp_path: Path, moto_s3: MotoS3
) -> None:
    from tcia_fetch.cluster.runner import _check_shared_destination

    home = _home(bucket, tmp_path)
    workers = _TwoBucketWorkers(f"s3://{bucket}/another")

    async def main() -> None:
        await _check_shared_destination(workers, home, FAST)  # type: ignore[arg-type]

    try:
        with pytest.raises(DestinationError) as caught:
            anyio.run(main)
    finally:
        home.close()
    message = str(caught.value)
    assert "tcp://node2:1" in message and "tcp://node1:1" not in message
    assert "not reachable alike from every Dask worker" in message
    assert "AWS_ENDPOINT_URL" in message
    assert not any("cluster-probe" in key for key in list_keys(moto_s3.client(), bucket))  # removed


# --- adoption of what a killed worker published ----------------------------------------------------


def _planned(uid: str) -> Any:
    from types import MappingProxyType

    from tcia_fetch.plan.model import PlannedSeries
    from tcia_fetch.series.expectation import SeriesExpectation

    return PlannedSeries(uid, SeriesExpectation(uid, 1, 5), MappingProxyType({"SeriesInstanceUID": uid}), "t")


def _publish(home: BucketDestination, uid: str, data: bytes, relative: str) -> tuple[FileEntry, ...]:
    """What a worker leaves in the bucket: one archive at its final key (keep = zip here)."""
    staging = home.new_staging(uid)
    (staging / f"{uid}.zip").write_bytes(data)
    home.publish(staging, PurePosixPath(relative))
    return (FileEntry(name=f"{uid}.zip", size=len(data), md5=hashlib.md5(data).hexdigest()),)


def test_a_retry_adopts_what_a_killed_worker_published_in_a_bucket_and_never_publishes_twice(
    bucket: str, tmp_path: Path, moto_s3: MotoS3
) -> None:
    from tcia_fetch.cluster.remote import adopt_published
    from tests.store.helpers import record

    uid = "1.2.826.0.1.3680043.8.498.1"
    home = _home(bucket, tmp_path)
    try:
        writer = home.open_journal("r")
        assert not adopt_published(home, writer, "flat", _planned(uid), "r", keep="zip")  # nothing yet

        # The killed worker: verified record, then the upload completed, then death before "done".
        dead = home.open_journal("r")
        files = _publish(home, uid, b"archive-bytes", uid)
        dead.append(record(uid, "verified", run_id="r", path=uid, files=files))
        dead.close()

        assert adopt_published(home, writer, "flat", _planned(uid), "r", keep="zip")
        writer.close()
        judge = home.open_journal("x")
        assert judge.latest()[uid].status == "done"
        judge.close()
        assert list_keys(moto_s3.client(), bucket, f"lake/{uid}/") == {f"lake/{uid}/{uid}.zip": 13}

        # An object that does not match its record (same size, other bytes) is never adopted: the
        # fetch then finds the key taken, refuses to publish over it, and reports it.
        moto_s3.client().put_object(Bucket=bucket, Key=f"lake/{uid}/{uid}.zip", Body=b"ARCHIVE-BYTES")
        other = home.open_journal("r")
        assert not adopt_published(home, other, "flat", _planned(uid), "r", keep="zip")
        other.close()

        # A key with no record of its series (someone else's object) is never adopted either.
        stranger = "1.2.826.0.1.3680043.8.498.2"
        _publish(home, stranger, b"not ours", stranger)
        writer = home.open_journal("r")
        assert not adopt_published(home, writer, "flat", _planned(stranger), "r", keep="zip")
        writer.close()
    finally:
        home.close()


def test_a_damaged_series_in_a_bucket_is_adopted_only_from_a_record_of_this_run(
    bucket: str, tmp_path: Path
) -> None:
    from tcia_fetch.cluster.remote import adopt_published
    from tests.store.helpers import record

    uid = "1.2.826.0.1.3680043.8.498.5"
    home = _home(bucket, tmp_path)
    try:
        earlier = home.open_journal("old")
        files = _publish(home, uid, b"12345", uid)
        earlier.append(record(uid, "done", run_id="old", path=uid, files=files))
        earlier.close()
        writer = home.open_journal("new")
        # The object still matches its old record, but the run decided to repair it: only a
        # record of this run (a repair that got as far as publishing) could be adopted.
        assert not adopt_published(
            home, writer, "flat", _planned(uid), "new", recorded_path=uid, damaged=True, keep="zip"
        )
        writer.append(record(uid, "verified", run_id="new", path=uid, files=files))
        assert adopt_published(
            home, writer, "flat", _planned(uid), "new", recorded_path=uid, damaged=True, keep="zip"
        )
        writer.close()
    finally:
        home.close()


# --- each worker's home: its own staging, no secret in what travels ---------------------------------


def test_a_worker_stages_in_a_work_dir_of_its_own_and_removes_it_when_closed(bucket: str) -> None:
    import os
    import pickle

    from tcia_fetch.cluster.remote import WorkerConfig, _close_worker_home, _open_worker_home
    from tcia_fetch.config import ClientSettings
    from tcia_fetch.engine.worker import SeriesJob
    from tcia_fetch.store._fs import host_name
    from tcia_fetch.store.objhome import default_work_dir

    url = f"s3://{bucket}/lake"
    config = WorkerConfig(
        run_id="r",
        destination=url,
        settings=ClientSettings(),
        series_job=SeriesJob(layout="flat", keep="zip", verify_md5=True, new_file_names=False),
        retry_policy=FAST,
        concurrency=1,
        slots=1,
        max_requests_per_s=None,
        max_bytes_per_s=None,
        damaged=frozenset(),
        semaphore=_no_semaphore,
    )
    # What travels with every task names the bucket, never a credential (workers read their own).
    shipped = pickle.dumps(config)
    assert url.encode() in shipped
    assert CANARY_SECRET.encode() not in shipped and CANARY_KEY_ID.encode() not in shipped

    async def main() -> None:
        home = await _open_worker_home(config)
        assert isinstance(home, BucketDestination)
        expected = default_work_dir(BucketLocation(bucket, "lake")) / f"dask-{os.getpid()}-{host_name()}"
        assert home.work_dir == expected and expected.is_dir()
        staging = home.new_staging("1.2.3")
        assert staging.is_relative_to(expected)
        await _close_worker_home(home)
        assert not expected.exists()
        assert expected.parent.is_dir()  # the client's work dir beside it is not the worker's

    anyio.run(main)


def _no_semaphore() -> Any:
    """A picklable stand-in for the cluster semaphore's factory (not called here)."""
    return None


def test_the_client_removes_the_work_dirs_of_this_hosts_killed_workers_only(bucket: str) -> None:
    import os

    from tcia_fetch.store._fs import host_name
    from tcia_fetch.store.objhome import default_work_dir, remove_dead_worker_dirs
    from tests.store.helpers import dead_pid

    location = BucketLocation(bucket, "lake")
    base = default_work_dir(location)
    dead = base / f"dask-{dead_pid()}-{host_name()}"
    alive = base / f"dask-{os.getpid()}-{host_name()}"
    elsewhere = base / f"dask-{dead_pid()}-another-host"
    for directory in (dead, alive, elsewhere):
        (directory / "staging").mkdir(parents=True)
    assert remove_dead_worker_dirs(location) == 1
    assert not dead.exists() and alive.is_dir() and elsewhere.is_dir()
