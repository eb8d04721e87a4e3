"""Several processes writing one journal at once (shards, Dask workers): compaction never loses a record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tcia_fetch.store._fs import host_name
from tcia_fetch.store.journal import LEASE_NAME, SNAPSHOT_NAME, Journal
from tests.store.helpers import UID_A, UID_B, UID_C, record


def _statuses(state_dir: Path) -> dict[str, str]:
    return {r.series_uid: r.status for r in Journal.open(state_dir, run_id="look").iter_latest()}


def test_a_shared_compaction_keeps_a_live_writers_segment_and_its_later_appends(tmp_path: Path) -> None:
    live = Journal.open(tmp_path, run_id="shard-0")
    live.append(record(UID_A, "verified", path="a"))
    finished = Journal.open(tmp_path, run_id="shard-1")
    finished.append(record(UID_B, "done", path="b"))
    finished.close()

    compactor = Journal.open(tmp_path, run_id="shard-2")
    compactor.append(record(UID_C, "done", path="c"))
    compactor.compact()
    live.append(record(UID_A, "done", path="a"))  # after the compaction: must not be lost
    assert _statuses(tmp_path) == {UID_A: "done", UID_B: "done", UID_C: "done"}

    live.close()
    Journal.open(tmp_path, run_id="last").compact()
    assert _statuses(tmp_path) == {UID_A: "done", UID_B: "done", UID_C: "done"}


def test_a_later_segment_still_wins_over_an_earlier_one_after_partial_folding(tmp_path: Path) -> None:
    early = Journal.open(tmp_path, run_id="early")
    early.append(record(UID_A, "failed", reason="cut", reference="transport"))
    early.close()
    live = Journal.open(tmp_path, run_id="live")
    live.append(record(UID_B, "verified", path="b"))
    late = Journal.open(tmp_path, run_id="late")
    late.append(record(UID_A, "done", path="a"))
    late.close()
    Journal.open(tmp_path, run_id="c").compact()
    assert _statuses(tmp_path)[UID_A] == "done"
    live.close()
    Journal.open(tmp_path, run_id="d").compact()
    assert _statuses(tmp_path) == {UID_A: "done", UID_B: "verified"}


def test_compaction_waits_for_a_live_lease_holder_and_gives_up_without_loss(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, run_id="r")
    journal.append(record(UID_A, "done", path="a"))
    calls: list[int] = []
    live_owner = {"host": host_name(), "pid": os.getpid(), "token": "other", "at": 4e9, "run": "other"}
    (tmp_path / LEASE_NAME).write_text(json.dumps(live_owner))
    journal.compact(wait_s=0.3, then=lambda: calls.append(1))
    assert calls == []  # never ran outside the lease
    assert not (tmp_path / SNAPSHOT_NAME).exists()
    assert json.loads((tmp_path / LEASE_NAME).read_text())["token"] == "other"  # not ours to remove
    (tmp_path / LEASE_NAME).unlink()
    journal.compact(then=lambda: calls.append(1))
    assert calls == [1]
    assert not (tmp_path / LEASE_NAME).exists()
    assert _statuses(tmp_path) == {UID_A: "done"}


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tcia_fetch.store.journal import Journal
    from tests.store.helpers import record

    state_dir, writer, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out = state_dir.parent / f"seen-{writer}.txt"
    for round_ in range(rounds):
        journal = Journal.open(state_dir, run_id=f"w{writer}")
        for index in range(40):
            uid = f"1.2.{writer}.{round_}.{index}"
            journal.append(record(uid, "done", path=f"p{writer}/{round_}/{index}"))

        def write_metadata():
            # What run.py does under the lease: rewrite metadata.csv from the merged journal.
            view = sorted(r.series_uid for r in journal.iter_latest("done"))
            tmp = state_dir.parent / f"metadata.{writer}.tmp"
            tmp.write_text("\\n".join(view) + "\\n")
            tmp.replace(state_dir.parent / "metadata.txt")

        journal.compact(wait_s=60, then=write_metadata)
        journal.close()
    """
)


def test_processes_compacting_at_once_never_lose_a_record_or_a_metadata_row(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    writers, rounds = 4, 5
    root = str(Path(__file__).resolve().parents[2])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(state_dir), str(writer), str(rounds)],
            cwd=root,
            env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
            stderr=subprocess.PIPE,
        )
        for writer in range(writers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    expected = {f"1.2.{w}.{r}.{i}" for w in range(writers) for r in range(rounds) for i in range(40)}
    assert set(_statuses(state_dir)) == expected
    # Every writer compacted after its last append, under the lease: the last metadata written has
    # seen every record, each once.
    rows = (tmp_path / "metadata.txt").read_text().split()
    assert len(rows) == len(expected)
    assert set(rows) == expected
    assert not (state_dir / LEASE_NAME).exists()
    Journal.open(state_dir, run_id="final").compact()
    assert set(_statuses(state_dir)) == expected
