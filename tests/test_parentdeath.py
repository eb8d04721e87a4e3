"""A run's helper child (the Parquet catalog writer) dies with the run, even when the run is SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux"
)

_CHILD = (
    "import time; from tcia_fetch._parentdeath import die_with_parent; "
    "die_with_parent(); print('armed', flush=True); time.sleep(300)"
)
_PARENT = f"""
import subprocess, sys, time
from tcia_fetch._parentdeath import child_env
command = [sys.executable, "-c", {_CHILD!r}]
child = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead orphan may wait for a reaper that never comes in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_helper_child_is_killed_when_its_parent_is_sigkilled() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert _running(child_pid)
    parent.kill()  # SIGKILL: no cleanup code of the parent runs
    parent.wait(timeout=30)
    parent.stdout.close()
    deadline = time.monotonic() + 60  # the kernel signals at once; the room is for a loaded machine
    while _running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child_pid), "the helper child outlived its SIGKILLed parent"
