"""kill -9 at every step of the publish protocol, then reconcile: nothing lost, nothing half-done.

A child process runs the store side of two series (stage, verified record, publish, done record)
and SIGKILLs itself at one named point. The parent then reconciles exactly as a new run would
and checks the invariants of reliability §4.7: no leftovers, every ``done`` series intact, every
other series absent from its final place, and resuming completes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.reconcile import check_published, reconcile
from tcia_fetch.store.records import FileEntry, SeriesRecord

SERIES = ("1.2.3.1", "1.2.3.2")
STEPS = ("staged-empty", "staged", "verified", "published", "done")

_CHILD = """
import os, signal, sys
from pathlib import Path
from tests.store.test_crash_windows import run_series

def crash(point):
    if point == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

run_series(Path(sys.argv[1]), run_id="crashy", crash=crash)
"""


def _files_for(uid: str) -> dict[str, bytes]:
    return {f"{index}.dcm": (uid + str(index)).encode() * (50 + index) for index in range(3)}


def run_series(root: Path, *, run_id: str, crash: object = None, only: frozenset[str] | None = None) -> None:
    """The engine's store calls for each series, in protocol order, with a crash hook between steps."""
    hook = crash if callable(crash) else (lambda point: None)
    destination = Destination(root)
    destination.prepare()
    journal = Journal.open(destination.state_dir, run_id=run_id)
    for number, uid in enumerate(SERIES):
        if only is not None and uid not in only:
            continue
        staging = destination.new_staging(uid)
        hook(f"{number}:staged-empty")
        entries = []
        for name, data in _files_for(uid).items():
            (staging / name).write_bytes(data)
            entries.append(FileEntry(name, len(data), None))
        hook(f"{number}:staged")
        verified = SeriesRecord(uid, "verified", 0.0, run_id, path=f"C/P/{uid}", files=tuple(entries))
        journal.append(verified)
        hook(f"{number}:verified")
        destination.publish(staging, PurePosixPath(f"C/P/{uid}"))
        hook(f"{number}:published")
        journal.append(verified.with_status("done", run_id=run_id))
        hook(f"{number}:done")
    journal.close()


@pytest.mark.parametrize("crash_point", [f"{n}:{step}" for n in range(2) for step in STEPS])
def test_kill_at_any_step_then_reconcile_and_resume(tmp_path: Path, crash_point: str) -> None:
    root = tmp_path / "dest"
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), crash_point],
        env=environment,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    destination = Destination(root)
    destination.prepare()
    journal = Journal.open(destination.state_dir, run_id="restart")
    result = reconcile(destination, journal)

    assert destination.leftover_entries() == []  # the dead run's staging is gone
    assert result.damaged == ()
    latest = journal.latest()
    # Reconciliation inspects only what the crash left; the journal says what is done.
    done = {uid for uid in SERIES if journal.status_of(uid) == "done"}
    assert set(result.done) <= done
    for uid in SERIES:
        final = destination.final_path(PurePosixPath(f"C/P/{uid}"))
        if uid in done:
            assert check_published(destination, latest[uid]) == ()
        else:
            assert not final.exists(), f"{uid} is visible but not done after a crash at {crash_point}"
    number, step = crash_point.split(":")
    if step == "published":
        assert result.adopted == (SERIES[int(number)],)  # published before the crash: kept, not refetched

    remaining = frozenset(SERIES) - done
    journal.close()
    run_series(root, run_id="resume", only=remaining)
    final_view = Journal.open(destination.state_dir, run_id="check").latest()
    assert {uid: final_view[uid].status for uid in SERIES} == dict.fromkeys(SERIES, "done")
    for uid in SERIES:
        final = destination.final_path(PurePosixPath(f"C/P/{uid}"))
        assert {path.name: path.read_bytes() for path in final.iterdir()} == _files_for(uid)
