"""A SIGKILL during an atomic write (metadata.csv, the journal snapshot, a report) leaves no litter
once the job has been rerun to a clean finish (reliability.md I5 / D-5: "after SIGKILL, the next
run's startup removes them").

``tcia_fetch.store.atomic`` writes ``.NAME.PID.HEX.tmp`` beside the target; at start-up, under
the destination lock, ``Destination.cleanup_leftovers`` removes those whose pid is dead, in the
root, the state dir and ``reports/``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tcia_fetch.campaign.crash import crash_catalog
from tcia_fetch.campaign.oracle import leftover_paths
from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.testing import FakeNBIA

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _temporaries(out: Path) -> list[Path]:
    places = (out, out / ".tcia-fetch", out / ".tcia-fetch" / "reports")
    return [
        p
        for place in places
        if place.is_dir()
        for p in place.iterdir()
        if p.name.startswith(".") and p.name.endswith(".tmp")
    ]


def test_kill_during_atomic_write_then_rerun_leaves_no_temporary(tmp_path: Path) -> None:
    catalog = crash_catalog()
    collections = ", ".join(f'"{c}"' for c in sorted({e.collection for e in catalog.series}))
    job = tmp_path / "job.toml"
    job.write_text(f"[download]\nconcurrency = 3\n[[query]]\ncollection = [{collections}]\n")
    caught: list[str] = []
    with serve_in_thread(FakeNBIA(catalog)) as server:
        out = tmp_path / "out"
        args = ["run", str(job), "--out", str(out), "--base-url", server.base_url, "--quiet"]
        for _ in range(15):
            proc = start_cli(args)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                found = _temporaries(out)
                if found:
                    proc.send_signal(signal.SIGKILL)
                    caught.extend(p.name for p in found)
                    break
                time.sleep(0.0005)
            proc.wait(timeout=30)
            if caught:
                break
        if not caught:
            pytest.skip("no kill landed inside an atomic write in 15 tries")
        final = start_cli(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        final.communicate(timeout=120)
        assert final.returncode == 0
    assert leftover_paths(out) == [], f"killed while writing {caught}"
