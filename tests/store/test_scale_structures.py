"""The compact structures behind 600,000-series jobs: digest sets, the journal's index and overlay,
incremental compaction by several writers under the lease, and the local StateStorage."""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from array import array
from pathlib import Path

import pytest

from tcia_fetch.store.digests import GrowingDigestSet, SortedDigests, sorted_unique, uid_digest
from tcia_fetch.store.journal import DAMAGED_ON_DISK, LEASE_NAME, SEGMENT_DIR, SNAPSHOT_NAME, Journal
from tcia_fetch.store.statestore import LocalStateStorage, StateStorage
from tests.store.helpers import dead_pid, record


def _uids(count: int, prefix: str = "1.2.826.0.1") -> list[str]:
    return [f"{prefix}.{index}" for index in range(count)]


def test_sorted_digests_answer_membership_and_round_trip() -> None:
    members = SortedDigests.of_uids(_uids(5000))
    assert len(members) == 5000
    assert all(uid in members for uid in _uids(5000))
    assert not any(uid in members for uid in _uids(5000, prefix="1.2.826.0.2"))
    assert SortedDigests.from_bytes(members.to_bytes()).values == members.values
    smaller = members.without(["1.2.826.0.1.7", "9.9.9"])
    assert len(smaller) == 4999 and "1.2.826.0.1.7" not in smaller and "1.2.826.0.1.8" in smaller
    with pytest.raises(ValueError, match="8-byte"):
        SortedDigests.from_bytes(b"123")


def test_growing_digest_set_deduplicates_across_merges() -> None:
    seen = GrowingDigestSet()
    uids = _uids(200_000)
    assert all(seen.add(uid_digest(uid)) for uid in uids)  # crosses several buffer merges
    assert not any(seen.add(uid_digest(uid)) for uid in uids[::1000])
    assert len(seen) == 200_000
    assert uids[-1] in seen and "7.7.7" not in seen
    assert len(seen.freeze()) == 200_000


def test_sorted_unique_of_many_never_holds_them_as_python_ints() -> None:
    """Issue 13: ``sorted`` of n digests is a list of n Python ints (~40 bytes each); a large
    input is sorted a top-byte partition at a time, so the transient cost is ~8 bytes each."""
    rng = random.Random(13)
    count = 200_000
    values = array("Q", (rng.getrandbits(64) for _ in range(count)))
    values.extend(values[:5000])  # repeats are dropped
    values.extend((0, 2**64 - 1))  # both ends of the range
    tracemalloc.start()
    try:
        result = sorted_unique(values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert list(result) == sorted(set(values))
    # result + partitions (8 bytes a value each) + one partition as a list; a whole list of
    # Python ints alone would be ~40 bytes a value (8 MB here).
    assert peak < 20 * len(values) + (1 << 20), f"{peak / 1e6:.1f} MB transient for {len(values)} values"


def test_growing_digest_set_merges_keep_it_sorted_and_complete() -> None:
    rng = random.Random(7)
    seen = GrowingDigestSet()
    added = [rng.getrandbits(64) for _ in range(150_000)]  # two buffer merges and a remainder
    assert all(seen.add(value) for value in added)
    assert not seen.add(added[100]) and not seen.add(added[-1])
    assert list(seen.freeze().values) == sorted(added)


def test_iter_latest_among_yields_only_the_given_series(tmp_path: Path) -> None:
    with Journal.open(tmp_path, run_id="r1") as first:
        for uid in _uids(50):
            first.append(record(uid, "done", path=f"p/{uid}"))
        first.compact()
    with Journal.open(tmp_path, run_id="r2") as second:
        for uid in _uids(60)[45:]:  # five override snapshot records, ten are new (in a segment)
            second.append(record(uid, "done", path=f"q/{uid}"))
    view = Journal.open(tmp_path, run_id="r3")
    wanted = ["1.2.826.0.1.3", "1.2.826.0.1.47", "1.2.826.0.1.58", "9.9.9"]
    found = {
        item.series_uid: item.path for item in view.iter_latest("done", among=SortedDigests.of_uids(wanted))
    }
    assert found == {
        "1.2.826.0.1.3": "p/1.2.826.0.1.3",
        "1.2.826.0.1.47": "q/1.2.826.0.1.47",
        "1.2.826.0.1.58": "q/1.2.826.0.1.58",
    }
    assert list(view.iter_latest("failed", among=SortedDigests.of_uids(wanted))) == []


def test_the_compact_view_agrees_with_the_records_across_snapshot_and_segments(tmp_path: Path) -> None:
    with Journal.open(tmp_path, run_id="r1") as first:
        for uid in _uids(300):
            first.append(record(uid, "done", path=f"p/{uid}", dicom_bytes=10))
        first.compact()
    second = Journal.open(tmp_path, run_id="r2")
    assert second.statistics.snapshot_records == 300
    # Newer records in a segment override the snapshot's.
    second.append(record("1.2.826.0.1.0", "failed", reason="x", reference=DAMAGED_ON_DISK))
    second.append(record("1.2.826.0.1.1", "failed", reason="y", reference="md5-mismatch"))
    second.append(record("1.2.826.0.1.999", "verified", path="p/new", dicom_bytes=5))
    second.close()
    view = Journal.open(tmp_path, run_id="r3")
    counts = view.counts()
    assert (counts.done, counts.failed, counts.damaged, counts.verified) == (298, 2, 1, 1)
    assert counts.done_bytes == 2980
    assert view.status_of("1.2.826.0.1.0") == "failed" and view.is_damaged("1.2.826.0.1.0")
    assert view.status_of("1.2.826.0.1.5") == "done" and view.status_of("4.4.4") is None
    assert "1.2.826.0.1.0" in view.digests("damaged") and "1.2.826.0.1.1" not in view.digests("damaged")
    assert "1.2.826.0.1.1" in view.digests("failed") and "1.2.826.0.1.0" in view.digests("failed")
    assert len(view.digests("done")) == 298
    streamed = list(view.iter_latest())
    assert len(streamed) == len(view) == 301
    assert len({item.series_uid for item in streamed}) == 301
    assert {item.series_uid for item in view.iter_latest("failed")} == {"1.2.826.0.1.0", "1.2.826.0.1.1"}
    assert [item.series_uid for item in view.iter_latest("verified")] == ["1.2.826.0.1.999"]


def test_a_writer_compacts_every_n_records_and_keeps_its_overlay_small(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, run_id="r", compact_every=100)
    for uid in _uids(450):
        journal.append(record(uid, "done", path="p"))
    assert len(journal._overlay) < 100  # folded into the snapshot as it went
    assert (tmp_path / SNAPSHOT_NAME).exists()
    journal.close()
    assert len(Journal.open(tmp_path, run_id="check").digests("done")) == 450


def test_two_writers_compacting_at_once_lose_nothing(tmp_path: Path) -> None:
    """Two shards append and compact in turns; a live writer's segment is never folded by the other."""
    shard_a = Journal.open(tmp_path, run_id="a", compact_every=50)
    shard_b = Journal.open(tmp_path, run_id="b", compact_every=50)
    for index in range(400):
        (shard_a if index % 2 else shard_b).append(record(f"1.2.3.{index}", "done", path="p"))
        if index % 97 == 0:
            (shard_b if index % 2 else shard_a).compact()
    shard_a.compact()
    shard_b.compact()
    shard_a.close()
    shard_b.close()
    final = Journal.open(tmp_path, run_id="check")
    assert final.counts().done == 400
    Journal.open(tmp_path, run_id="last").compact()
    assert Journal.open(tmp_path, run_id="again").counts().done == 400
    assert list((tmp_path / SEGMENT_DIR).glob("*.jsonl")) == []


def test_a_live_lease_holder_makes_others_skip_and_a_dead_ones_lease_is_broken(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, run_id="r")
    journal.append(record("1.2.3", "done", path="p"))
    storage = LocalStateStorage(tmp_path)
    from tcia_fetch.store._fs import host_name

    live = {"host": host_name(), "pid": os.getpid(), "token": "t", "at": 4e9}
    assert storage.create(LEASE_NAME, json.dumps(live).encode())
    journal.compact()  # the lease is held by a live process: nothing is folded
    assert not (tmp_path / SNAPSHOT_NAME).exists()
    storage.delete(LEASE_NAME)
    dead = {"host": host_name(), "pid": dead_pid(), "token": "t", "at": 4e9}
    assert storage.create(LEASE_NAME, json.dumps(dead).encode())
    journal.compact()
    assert (tmp_path / SNAPSHOT_NAME).exists()
    assert not (tmp_path / LEASE_NAME).exists()  # released after use
    assert Journal.open(tmp_path, run_id="x").status_of("1.2.3") == "done"


def test_then_runs_under_the_lease_after_compaction(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, run_id="r")
    journal.append(record("1.2.3", "done", path="p"))
    seen: list[bool] = []
    journal.compact(then=lambda: seen.append((tmp_path / LEASE_NAME).exists()))
    assert seen == [True]


def test_an_old_format_snapshot_is_read_and_rewritten(tmp_path: Path) -> None:
    import zstandard

    lines = [json.dumps({"snapshot": 1, "records": 2, "created_at": 1.0})]
    lines += [record(uid, "done", path="p").to_json() for uid in ("1.2.1", "1.2.2")]
    data = zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode())
    (tmp_path / SNAPSHOT_NAME).write_bytes(data)
    journal = Journal.open(tmp_path, run_id="r")
    assert journal.counts().done == 2
    journal.compact()
    assert Journal.open(tmp_path, run_id="r2").latest().keys() == {"1.2.1", "1.2.2"}


def test_local_state_storage_implements_the_protocol(tmp_path: Path) -> None:
    storage = LocalStateStorage(tmp_path / "state")
    assert isinstance(storage, StateStorage)
    assert storage.read("a") is None and storage.version("a") is None and storage.list("") == []
    storage.write("a", b"one")
    first = storage.version("a")
    storage.write_from("a", iter([b"t", b"wo"]))
    assert storage.read("a") == b"two" and storage.version("a") != first
    assert storage.create("x/lease", b"1") and not storage.create("x/lease", b"2")
    assert storage.read("x/lease") == b"1"
    storage.append("logs/l1", b"a\n")
    storage.append("logs/l1", b"b\n")
    assert storage.read_log("logs/l1") == b"a\nb\n" and storage.list_logs("logs") == ["logs/l1"]
    stream = storage.read_stream("a")
    assert stream is not None
    with stream:
        assert stream.read() == b"two"
    storage.delete_log("logs/l1")
    storage.delete("a")
    storage.delete("a")
    assert storage.read_log("logs/l1") == b"" and storage.read("a") is None

    def failing() -> object:
        yield b"partial"
        raise RuntimeError("producer failed")

    storage.write("b", b"old")
    with pytest.raises(RuntimeError):
        storage.write_from("b", failing())  # type: ignore[arg-type]
    assert storage.read("b") == b"old"
    assert [p.name for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(Exception, match="invalid state name"):
        storage.read("../escape")


def test_the_index_is_read_in_chunks_and_a_cut_or_padded_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zstandard

    from tcia_fetch.errors import JournalError
    from tcia_fetch.store import journal as journal_module

    with Journal.open(tmp_path, run_id="r1") as first:
        for uid in _uids(40):
            first.append(record(uid, "done", path=f"p/{uid}", dicom_bytes=7))
        first.compact()
    monkeypatch.setattr(journal_module, "_CHUNK_BYTES", 64)  # many chunks per column
    view = Journal.open(tmp_path, run_id="r2")
    assert view.counts().done == 40 and view.counts().done_bytes == 280
    assert all(view.status_of(uid) == "done" for uid in _uids(40))
    snapshot = tmp_path / SNAPSHOT_NAME
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(snapshot.read_bytes())
    for damaged, message in ((plain[:-9], "truncated"), (plain + b"\x00" * 3, "unexpected data")):
        snapshot.write_bytes(zstandard.ZstdCompressor().compress(damaged))
        with pytest.raises(JournalError, match=message) as caught:
            Journal.open(tmp_path, run_id="r3")
        assert SNAPSHOT_NAME in str(caught.value)
