"""ObjectStateStorage (the StateStorage protocol over a bucket) and the bucket lock, on moto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.errors import DestinationBusyError, JournalError
from tcia_fetch.store._fs import host_name
from tcia_fetch.store._objstore import open_object_store
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.location import BucketLocation
from tcia_fetch.store.objhome import BucketDestination, BucketLock
from tcia_fetch.store.objstate import ObjectStateStorage
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.store.statestore import StateStorage
from tcia_fetch.testing.s3 import MotoS3


@pytest.fixture
def location(bucket: str) -> BucketLocation:
    return BucketLocation(bucket, "lake/tcia")


def storage_for(location: BucketLocation) -> ObjectStateStorage:
    return ObjectStateStorage(open_object_store(location, policy=RetryPolicy(testing=True)), location)


def test_state_storage_semantics(location: BucketLocation, moto_s3: MotoS3) -> None:
    storage: StateStorage = storage_for(location)
    assert storage.read("last-plan.json") is None and storage.version("last-plan.json") is None
    storage.write("last-plan.json", b"one")
    first = storage.version("last-plan.json")
    storage.write("last-plan.json", b"two")
    assert storage.read("last-plan.json") == b"two" and storage.version("last-plan.json") != first
    stream = storage.read_stream("last-plan.json")
    assert stream is not None and stream.read() == b"two"
    assert storage.create("compact.lease", b"me") is True
    assert storage.create("compact.lease", b"you") is False
    assert storage.read("compact.lease") == b"me"
    storage.append("journal/a.jsonl", b"1\n")
    storage.append("journal/a.jsonl", b"2\n")
    storage.append("journal/b.jsonl", b"3\n")
    # A second handle (another process) continues the same log after what is there.
    other = storage_for(location)
    other.append("journal/a.jsonl", b"4\n")
    assert storage.read_log("journal/a.jsonl") == b"1\n2\n4\n"
    assert storage.list_logs("journal/") == ["journal/a.jsonl", "journal/b.jsonl"]
    assert storage.read_log("journal/none") == b""
    storage.delete_log("journal/a.jsonl")
    assert storage.list_logs("journal/") == ["journal/b.jsonl"]
    storage.delete("compact.lease")
    storage.delete("compact.lease")  # absent is fine
    assert "compact.lease" not in storage.list("")
    assert storage.describe("lock") == f"s3://{location.bucket}/lake/tcia/.tcia-fetch/lock"
    keys = [item["Key"] for item in moto_s3.client().list_objects_v2(Bucket=location.bucket)["Contents"]]
    assert all(key.startswith("lake/tcia/.tcia-fetch/") for key in keys)


def test_two_writers_of_one_log_part_are_detected(location: BucketLocation) -> None:
    one, two = storage_for(location), storage_for(location)
    one.append("journal/x.jsonl", b"a\n")
    two.append("journal/x.jsonl", b"b\n")
    with pytest.raises(JournalError, match="exactly one writer"):
        one.append("journal/x.jsonl", b"c\n")  # its cached sequence number is taken


def test_journal_records_are_in_the_bucket_before_append_returns(
    location: BucketLocation, tmp_path: Path
) -> None:
    storage = storage_for(location)
    journal = Journal.open(storage, run_id="r1")
    journal.append(SeriesRecord(series_uid="1.2.3", status="verified", at=1.0, run_id="r1"))
    # Another machine (another storage client) sees it without any compaction.
    seen = Journal.open(storage_for(location), run_id="r2")
    assert seen.status_of("1.2.3") == "verified"
    journal.append(SeriesRecord(series_uid="1.2.3", status="done", at=2.0, run_id="r1"))
    journal.close()
    journal.compact()
    assert storage.list_logs("journal/") == []
    assert storage.read("snapshot.jsonl.zst") is not None
    again = Journal.open(storage_for(location), run_id="r3")
    assert again.status_of("1.2.3") == "done"


def test_bucket_lock_refuses_a_live_holder_and_takes_over_a_stale_one(
    location: BucketLocation, tmp_path: Path
) -> None:
    home = BucketDestination(location, work_dir=tmp_path / "w1", policy=RetryPolicy(testing=True))
    lock = BucketLock.acquire(home, run_id="first")
    with pytest.raises(DestinationBusyError, match="run first"):
        BucketLock.acquire(home, run_id="second")
    lock.heartbeat()
    # Stale by age only: with a zero staleness allowance the next run takes it over...
    time.sleep(1.1)
    taken = BucketLock.acquire(home, run_id="second", stale_after_s=0.5)
    assert json.loads(home.state.read("lock") or b"{}")["run_id"] == "second"
    # ...and the old holder notices at its next heartbeat instead of racing on.
    with pytest.raises(DestinationBusyError, match="lost the lock"):
        lock.heartbeat()
    lock.release()
    assert home.state.read("lock") is not None  # releasing a lost lock never deletes the new holder's
    taken.release()
    assert home.state.read("lock") is None


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_bucket_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(
    location: BucketLocation, tmp_path: Path
) -> None:
    # A SIGKILLed run leaves its lock behind, freshly heartbeaten: on this host a dead pid is
    # proof (the rule of the directory lock), so the rerun must not wait for it to age out.
    home = BucketDestination(location, work_dir=tmp_path / "w1", policy=RetryPolicy(testing=True))
    killed = {"host": host_name(), "pid": _dead_pid(), "run_id": "killed", "token": "t", "started_at": 0}
    assert home.state.create("lock", json.dumps(killed).encode())
    taken = BucketLock.acquire(home, run_id="rerun")
    assert json.loads(home.state.read("lock") or b"{}")["run_id"] == "rerun"
    taken.release()
    assert home.state.read("lock") is None


def test_bucket_lock_of_another_host_is_judged_by_age_only(location: BucketLocation, tmp_path: Path) -> None:
    # Another host's pid means nothing here: its lock stays until it goes stale by age.
    home = BucketDestination(location, work_dir=tmp_path / "w1", policy=RetryPolicy(testing=True))
    remote = {"host": "elsewhere-node", "pid": _dead_pid(), "run_id": "remote", "token": "t", "started_at": 0}
    assert home.state.create("lock", json.dumps(remote).encode())
    with pytest.raises(DestinationBusyError, match="run remote"):
        BucketLock.acquire(home, run_id="rerun")
    time.sleep(1.1)
    BucketLock.acquire(home, run_id="rerun", stale_after_s=0.5).release()


def test_a_log_continues_after_its_highest_part_even_with_gaps(
    location: BucketLocation, moto_s3: MotoS3
) -> None:
    storage = storage_for(location)
    for data in (b"a\n", b"b\n", b"c\n"):
        storage.append("journal/g.jsonl", data)
    # A delete_log killed half-way removed the first part only.
    moto_s3.client().delete_object(
        Bucket=location.bucket, Key="lake/tcia/.tcia-fetch/journal/g.jsonl/000000000000"
    )
    storage_for(location).append("journal/g.jsonl", b"d\n")
    assert storage.read_log("journal/g.jsonl") == b"b\nc\nd\n"
