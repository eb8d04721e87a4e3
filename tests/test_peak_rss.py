"""Peak RSS of a child is read only once it runs its own program (``campaign/process.py``).

Between fork and exec the child's /proc entry shows the parent's memory: a test worker that had
grown past 200 MB once made a hostile-server case report "peak RSS > 200 MB" for a CLI that
never came near it (a flaky failure). The reading is tied to the child's exact command line.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tcia_fetch.campaign.process import peak_rss_kb


def test_peak_rss_counts_only_the_expected_program() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(5)"]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 10
        while (peak := peak_rss_kb(proc.pid, argv)) < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert peak >= 1000  # the interpreter, read as it runs: some MB
        assert peak_rss_kb(proc.pid, [*argv, "other"]) == 0  # not the program asked about
        assert peak_rss_kb(proc.pid, argv[:1]) == 0
    finally:
        proc.kill()
        proc.wait()
    assert peak_rss_kb(proc.pid, argv) == 0  # gone
