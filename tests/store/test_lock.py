"""Destination lock: one live run per destination, stale locks taken over, races have one winner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tcia_fetch.errors import DestinationBusyError
from tcia_fetch.store._fs import host_name
from tcia_fetch.store.lock import LOCK_NAME, acquire_destination, read_holder
from tests.store.helpers import dead_pid


def _plant_lock(state_dir: Path, *, host: str, pid: int, age_s: float = 0.0) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = state_dir / LOCK_NAME
    started = time.time() - age_s
    lock.write_text(
        json.dumps({"host": host, "pid": pid, "run_id": "old-run", "started_at": started, "token": "t0"})
    )
    os.utime(lock, (started, started))
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


def test_unreadable_lock_is_busy_while_young_and_stale_when_old(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    with pytest.raises(DestinationBusyError, match="writing right now"):
        acquire_destination(tmp_path, run_id="r")
    past = time.time() - 3600
    os.utime(lock, (past, past))
    assert acquire_destination(tmp_path, run_id="r").holder.run_id == "r"


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
from tcia_fetch.errors import DestinationBusyError
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
