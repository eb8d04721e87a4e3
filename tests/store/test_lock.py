"""Destination lock: one live run per destination, stale locks taken over, races have one winner."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tcia_fetch.errors import DestinationBusyError, InputError
from tcia_fetch.store import lock as lock_module
from tcia_fetch.store._fs import host_name
from tcia_fetch.store.lock import (
    LOCK_NAME,
    UNREADABLE_LITTER_AGE_S,
    acquire_destination,
    lock_litter_owner,
    read_holder,
)
from tests.store.helpers import dead_pid


def _document(*, host: str, pid: int, started: float | None = None, **extra: object) -> str:
    started = time.time() if started is None else started
    return json.dumps(
        {"host": host, "pid": pid, "run_id": "old-run", "started_at": started, "token": "t0", **extra}
    )


def _age(path: Path, age_s: float) -> None:
    past = time.time() - age_s
    os.utime(path, (past, past))


def _plant_lock(
    state_dir: Path, *, host: str, pid: int, age_s: float = 0.0, name: str = LOCK_NAME, **extra: object
) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = state_dir / name
    lock.write_text(_document(host=host, pid=pid, started=time.time() - age_s, **extra))
    _age(lock, age_s)
    return lock


def test_second_acquirer_is_told_who_holds_it_and_since_when(tmp_path: Path) -> None:
    with acquire_destination(tmp_path, run_id="run-1") as held:
        with pytest.raises(DestinationBusyError) as caught:
            acquire_destination(tmp_path, run_id="run-2")
        message = str(caught.value)
        assert f"held by pid {os.getpid()} on host {host_name()}" in message
        assert "(run run-1) since" in message
        assert "if that run is dead" in message
        assert held.still_ours()
    assert not (tmp_path / LOCK_NAME).exists()
    acquire_destination(tmp_path, run_id="run-3").release()


def test_lock_file_says_who_holds_it(tmp_path: Path) -> None:
    lock = acquire_destination(tmp_path, run_id="run-1")
    holder = read_holder(tmp_path / LOCK_NAME)
    assert holder is not None
    assert (holder.host, holder.pid, holder.run_id) == (host_name(), os.getpid(), "run-1")
    lock.release()
    lock.release()  # idempotent


def test_stale_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid())
    lock = acquire_destination(tmp_path, run_id="new-run")
    assert lock.holder.run_id == "new-run"
    assert read_holder(tmp_path / LOCK_NAME).run_id == "new-run"  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # the stale file was removed


def test_other_host_with_a_fresh_heartbeat_is_live(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host="node-elsewhere", pid=1234, age_s=60)
    with pytest.raises(DestinationBusyError, match="pid 1234 on host node-elsewhere"):
        acquire_destination(tmp_path, run_id="r")


def test_other_host_with_an_old_heartbeat_is_stale(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host="node-elsewhere", pid=1234, age_s=3600)
    assert acquire_destination(tmp_path, run_id="r", stale_after_s=600).holder.run_id == "r"


def test_unreadable_lock_older_than_a_few_seconds_is_litter(tmp_path: Path) -> None:
    # What an older version killed between its O_EXCL create and its write leaves behind.
    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    _age(lock, UNREADABLE_LITTER_AGE_S + 2)
    assert acquire_destination(tmp_path, run_id="r").holder.run_id == "r"
    assert read_holder(lock).run_id == "r"  # type: ignore[union-attr]


def test_young_unreadable_lock_is_waited_for_not_judged(tmp_path: Path) -> None:
    # An older version may be writing it right now: wait for its content instead of taking it.
    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    elsewhere = _document(host="node-elsewhere", pid=4321)
    writer = threading.Timer(0.3, lambda: lock.write_text(elsewhere))
    writer.start()
    try:
        with pytest.raises(DestinationBusyError, match="pid 4321 on host node-elsewhere"):
            acquire_destination(tmp_path, run_id="r")
    finally:
        writer.cancel()
        writer.join()


def test_heartbeat_refreshes_and_detects_a_lost_lock(tmp_path: Path) -> None:
    lock = acquire_destination(tmp_path, run_id="r")
    past = time.time() - 3600
    os.utime(lock.path, (past, past))
    lock.heartbeat()
    assert time.time() - lock.path.stat().st_mtime < 60
    os.unlink(lock.path)
    _plant_lock(tmp_path, host="node-elsewhere", pid=99)
    with pytest.raises(DestinationBusyError, match="lost the destination lock"):
        lock.heartbeat()
    lock.release()
    assert read_holder(lock.path).host == "node-elsewhere"  # type: ignore[union-attr] # not ours: left alone


def test_racing_threads_over_a_stale_lock_yield_one_winner(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid())
    start = threading.Barrier(8)
    winners: list[str] = []
    losers: list[str] = []

    def contend(name: str) -> None:
        start.wait()
        try:
            acquire_destination(tmp_path, run_id=name)
        except DestinationBusyError:
            losers.append(name)
        else:
            winners.append(name)

    threads = [threading.Thread(target=contend, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, winners
    assert len(losers) == 7
    assert read_holder(tmp_path / LOCK_NAME).run_id == winners[0]  # type: ignore[union-attr]


_CONTENDER = """
import sys, time, pathlib
from tcia_fetch.errors import DestinationBusyError, InputError
from tcia_fetch.store import lock as lock_module
from tcia_fetch.store.lock import acquire_destination
state, go, done = (pathlib.Path(argument) for argument in sys.argv[1:4])
name = sys.argv[4]
while not go.exists():
    time.sleep(0.001)
try:
    acquire_destination(state, run_id=name)
    print("WIN", flush=True)
except DestinationBusyError:
    print("BUSY", flush=True)
while not done.exists():  # hold the lock (alive) until every contender has tried
    time.sleep(0.01)
"""


def test_racing_processes_over_a_stale_lock_yield_one_winner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _plant_lock(state, host=host_name(), pid=dead_pid())
    go, done = tmp_path / "go", tmp_path / "done"
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(state), str(go), str(done), f"p{n}"],
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for n in range(4)
    ]
    time.sleep(0.5)  # let the interpreters start and wait at the gate
    go.touch()
    outcomes: list[str] = []
    for process in processes:
        assert process.stdout is not None
        outcomes.append(process.stdout.readline().strip())
    done.touch()
    for process in processes:
        process.communicate(timeout=30)  # also closes the pipe
    assert sorted(outcomes) == ["BUSY", "BUSY", "BUSY", "WIN"]


# --- the link() protocol -------------------------------------------------------------------------


def test_lock_is_complete_before_it_gets_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    real_link = os.link

    def checking_link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        seen.append(json.loads(Path(source).read_text()))  # what the name will point at
        real_link(source, target)

    monkeypatch.setattr(os, "link", checking_link)
    lock = acquire_destination(tmp_path, run_id="run-1")
    assert [(doc["pid"], doc["run_id"], doc["token"]) for doc in seen] == [
        (os.getpid(), "run-1", lock.holder.token)
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # the temporary is gone
    assert os.stat(tmp_path / LOCK_NAME).st_nlink == 1


def test_link_reported_failed_but_made_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NFS: the server made the link, its reply was lost, the retransmission answers EEXIST.
    real_link = os.link

    def lossy_link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        real_link(source, target)
        raise FileExistsError(errno.EEXIST, "File exists", str(target))

    monkeypatch.setattr(os, "link", lossy_link)
    lock = acquire_destination(tmp_path, run_id="run-1")
    assert lock.still_ours()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_filesystem_without_hard_links_still_gets_an_exclusive_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "link", no_link)
    with acquire_destination(tmp_path, run_id="run-1") as held:
        assert read_holder(held.path).run_id == "run-1"  # type: ignore[union-attr]
        with pytest.raises(DestinationBusyError, match="run run-1"):
            acquire_destination(tmp_path, run_id="run-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- what dead processes leave behind -------------------------------------------------------------


def test_dead_pid_takeover_mutex_is_removed_at_once(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid())
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid(), name=f"{LOCK_NAME}.takeover")
    assert acquire_destination(tmp_path, run_id="new-run").holder.run_id == "new-run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_empty_takeover_mutex_older_than_a_few_seconds_is_litter(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid())
    mutex = tmp_path / f"{LOCK_NAME}.takeover"
    mutex.write_text("")
    _age(mutex, UNREADABLE_LITTER_AGE_S + 2)
    assert acquire_destination(tmp_path, run_id="new-run").holder.run_id == "new-run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_live_takeover_mutex_is_waited_for_not_failed(tmp_path: Path) -> None:
    # Another live process is in the middle of a takeover: wait for it, do not give up.
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid())
    mutex = _plant_lock(tmp_path, host=host_name(), pid=os.getpid(), name=f"{LOCK_NAME}.takeover")
    finisher = threading.Timer(0.3, mutex.unlink)
    finisher.start()
    try:
        assert acquire_destination(tmp_path, run_id="new-run").holder.run_id == "new-run"
    finally:
        finisher.join()


def test_takeover_mutex_of_another_host_is_abandoned_after_a_minute(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host="node-elsewhere", pid=1234, age_s=3600)
    _plant_lock(tmp_path, host="node-elsewhere", pid=1234, age_s=120, name=f"{LOCK_NAME}.takeover")
    assert acquire_destination(tmp_path, run_id="new-run").holder.run_id == "new-run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_recycled_pid_does_not_keep_a_dead_lock_alive(tmp_path: Path) -> None:
    # A requeued job may get the pid its killed predecessor had: the start time tells them apart.
    proc_start = lock_module._process_start(os.getpid())
    if proc_start is None:
        pytest.skip("no /proc/<pid>/stat here")
    _plant_lock(tmp_path, host=host_name(), pid=os.getpid(), proc_start=proc_start - 1)
    assert acquire_destination(tmp_path, run_id="new-run").holder.run_id == "new-run"


def test_temporaries_of_dead_writers_are_removed_others_left(tmp_path: Path) -> None:
    here, gone = host_name(), dead_pid()
    dead = [
        f".{LOCK_NAME}~{here}~{gone}~0a1b2c.tmp",
        f".{LOCK_NAME}.takeover~{here}~{gone}~0a1b2c.tmp",
        f".{LOCK_NAME}.stale~{here}~{gone}~0a1b2c.tmp",
        f".lock.shard-2-of-4~{here}~{gone}~0a1b2c.tmp",
    ]
    kept = [
        f".{LOCK_NAME}~{here}~{os.getpid()}~0a1b2c.tmp",  # a live writer (this process)
        f".{LOCK_NAME}~node-elsewhere~{gone}~0a1b2c.tmp",  # another host: only age can tell
        ".metadata.csv.123.0123456789ab.tmp",  # not the lock's (atomic-write cleanup owns it)
    ]
    for name in dead + kept:
        (tmp_path / name).write_text(_document(host=here, pid=gone))
    assert [lock_litter_owner(name) for name in dead] == [(here, gone)] * len(dead)
    assert lock_litter_owner(kept[-1]) is None
    with acquire_destination(tmp_path, run_id="new-run"):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_NAME, *kept])


# --- per-shard locks ------------------------------------------------------------------------------


def test_named_locks_are_independent_and_each_is_exclusive(tmp_path: Path) -> None:
    first = acquire_destination(tmp_path, run_id="s1", lock_name="lock.shard-1-of-2")
    second = acquire_destination(tmp_path, run_id="s2", lock_name="lock.shard-2-of-2")
    with pytest.raises(DestinationBusyError, match="run s1"):
        acquire_destination(tmp_path, run_id="again", lock_name="lock.shard-1-of-2")
    assert read_holder(tmp_path / "lock.shard-2-of-2").run_id == "s2"  # type: ignore[union-attr]
    first.release()
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_named_lock_of_a_dead_run_is_taken_over_with_its_own_mutex(tmp_path: Path) -> None:
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid(), name="lock.shard-3-of-16")
    _plant_lock(tmp_path, host=host_name(), pid=os.getpid())  # the whole-destination lock: live
    lock = acquire_destination(tmp_path, run_id="shard-3", lock_name="lock.shard-3-of-16")
    assert lock.holder.run_id == "shard-3"
    assert read_holder(tmp_path / LOCK_NAME).pid == os.getpid()  # type: ignore[union-attr] # untouched


@pytest.mark.parametrize("name", ["", "../lock", "lock/x", ".lock", "lock.takeover", "lock.tmp", "a~b"])
def test_unsafe_lock_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="invalid lock name"):
        acquire_destination(tmp_path, run_id="r", lock_name=name)
    assert list(tmp_path.iterdir()) == []


def test_waiting_for_a_takeover_is_bounded_and_says_what_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A live process holding the mutex far longer than a takeover takes (stopped, say).
    monkeypatch.setattr(lock_module, "_PATIENCE_S", 0.3)
    _plant_lock(tmp_path, host=host_name(), pid=dead_pid())
    _plant_lock(tmp_path, host=host_name(), pid=os.getpid(), name=f"{LOCK_NAME}.takeover")
    with pytest.raises(DestinationBusyError, match=r"takeover mutex .*lock\.takeover is held by pid"):
        acquire_destination(tmp_path, run_id="new-run")


def test_a_whole_destination_lock_of_either_home_is_refused_while_a_shard_runs(tmp_path: Path) -> None:
    """``verify`` and a Dask client lock a directory through ``home_lock``: while a shard holds its
    lock they are refused, naming the shard, as on a bucket; afterwards the lock is theirs."""
    from tcia_fetch.plan.shard import Shard
    from tcia_fetch.store.destination import Destination
    from tcia_fetch.store.home import home_lock

    destination = Destination(tmp_path / "dest")
    destination.prepare()
    shard = home_lock(destination, "shard-run", shard=Shard(0, 2))
    try:
        with pytest.raises(DestinationBusyError, match="shard"):
            home_lock(destination, "verify-run")
    finally:
        shard.release()
    home_lock(destination, "verify-run").release()
