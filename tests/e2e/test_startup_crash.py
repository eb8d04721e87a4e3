"""A run SIGKILLed at any instant of start-up, restarted at once, proceeds and finishes.

Each test kills the real CLI at a named crash point (``TCIA_FETCH_CRASHPOINT``, see
``tcia_fetch/_crashpoint.py``): while creating the lock, inside a takeover of a dead run's lock,
after the journal is opened, during reconciliation. The rerun starts the instant the killed
process is reaped, with no pause, and must exit 0 with the same tree as an uninterrupted run and
no lock, mutex or temporary left. The last two tests are the reproductions from issue 8: files an
older version left behind (a dead run's lock beside an empty takeover mutex; an empty lock).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_fetch._crashpoint import CRASH_POINT_ENV, STARTUP_CRASH_POINTS
from tcia_fetch.store._fs import host_name
from tcia_fetch.store.lock import LOCK_NAME, read_holder
from tcia_fetch.testing import Catalog
from tests.store.helpers import dead_pid

from .fixtures import STATE_DIR, cli, fake_server_process, leftovers, tree_fingerprint

pytestmark = pytest.mark.e2e

SEED = 53
SIZING = [
    "--seed",
    str(SEED),
    "--collections",
    "1",
    "--patients-per-collection",
    "2",
    "--series-per-study",
    "2",
    "--instances-per-series",
    "2,4",
    "--instance-bytes",
    "2000,12000",
]
_INSIDE_TAKEOVER = "takeover.before_set_aside"


def _catalog() -> Catalog:
    return Catalog.generate(
        seed=SEED,
        collections=1,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(2, 4),
        instance_bytes=(2000, 12000),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_server_process(tmp_path_factory.mktemp("server"), SIZING) as url:
        yield url


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    collections = sorted({entry.collection for entry in _catalog().series})
    path = tmp_path_factory.mktemp("job") / "job.toml"
    listed = ", ".join(f'"{name}"' for name in collections)
    path.write_text(f"[download]\nconcurrency = 2\n\n[[query]]\ncollection = [{listed}]\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, server: str, job: Path) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reference") / "out"
    code, err = _run(job, out, server)
    assert code == 0, err
    return tree_fingerprint(out)


def _run(job: Path, out: Path, server: str, *, crash_at: str | None = None) -> tuple[int, str]:
    extra = {CRASH_POINT_ENV: crash_at} if crash_at else {}
    args = ["run", str(job), "--out", str(out), "--base-url", server, "--quiet"]
    proc = cli(*args, extra_env=extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with proc:
        _, err = proc.communicate(timeout=100)
    return proc.returncode, err.decode(errors="replace")


def _plant_dead_lock(out: Path, *, name: str = LOCK_NAME) -> Path:
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock = state / name
    document = {"host": host_name(), "pid": dead_pid(), "run_id": "killed", "started_at": time.time()}
    lock.write_text(json.dumps({**document, "token": "t-dead"}))
    return lock


def _assert_finished_clean(out: Path, reference: dict[str, str]) -> None:
    assert tree_fingerprint(out) == reference
    assert leftovers(out) == []
    lock_files = sorted(p.name for p in (out / STATE_DIR).iterdir() if "lock" in p.name)
    assert lock_files == []  # lock released; no mutex, temporary or set-aside lock left


@pytest.mark.parametrize("point", [p for p in STARTUP_CRASH_POINTS if p != _INSIDE_TAKEOVER])
def test_killed_at_a_startup_point_then_rerun_at_once_finishes(
    tmp_path: Path, server: str, job: Path, reference: dict[str, str], point: str
) -> None:
    out = tmp_path / "out"
    if point.startswith("takeover."):
        _plant_dead_lock(out)  # only a run that takes over a dead run's lock reaches these
    code, err = _run(job, out, server, crash_at=point)
    assert code == -signal.SIGKILL, f"the run did not reach {point}: exit {code}: {err}"
    code, err = _run(job, out, server)  # at once: no pause between the kill and the restart
    assert code == 0, err
    _assert_finished_clean(out, reference)


def test_kill_inside_the_takeover_then_rerun_at_once_finishes(
    tmp_path: Path, server: str, job: Path, reference: dict[str, str]
) -> None:
    out = tmp_path / "out"
    dead_lock = _plant_dead_lock(out)
    code, err = _run(job, out, server, crash_at=_INSIDE_TAKEOVER)
    assert code == -signal.SIGKILL, err
    mutex = read_holder(dead_lock.with_name(f"{LOCK_NAME}.takeover"))
    assert mutex is not None and mutex.readable  # the killed taker left its mutex, naming itself
    assert read_holder(dead_lock).run_id == "killed"  # type: ignore[union-attr] # not yet set aside
    code, err = _run(job, out, server)
    assert code == 0, err
    _assert_finished_clean(out, reference)


def test_dead_lock_beside_an_empty_takeover_mutex_does_not_block(
    tmp_path: Path, server: str, job: Path, reference: dict[str, str]
) -> None:
    # What an older version left when killed inside its takeover (issue 8's reproduction).
    out = tmp_path / "out"
    dead_lock = _plant_dead_lock(out)
    dead_lock.with_name(f"{LOCK_NAME}.takeover").write_bytes(b"")
    code, err = _run(job, out, server)
    assert code == 0, err
    _assert_finished_clean(out, reference)


def test_empty_lock_file_does_not_block(
    tmp_path: Path, server: str, job: Path, reference: dict[str, str]
) -> None:
    # What an older version left when killed between its O_EXCL create and its write.
    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / LOCK_NAME).write_bytes(b"")
    code, err = _run(job, out, server)
    assert code == 0, err
    _assert_finished_clean(out, reference)
