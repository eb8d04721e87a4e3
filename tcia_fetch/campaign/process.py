"""Run the fake server on a background thread and the real CLI as a child process.

The campaign drives ``python -m tcia_fetch run`` exactly as a user does (so SIGKILL, exit codes,
stdout/stderr and ``/proc/<pid>/cmdline`` are the real ones), while the fake stays in this
process, where its catalog (ground truth), request log and counters can be read directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tcia_fetch.testing import FakeNBIA, RunningServer, serve_in_background

__all__ = ["cli_command", "peak_rss_kb", "serve_in_thread", "start_cli"]


@contextmanager
def serve_in_thread(fake: FakeNBIA, *, start_timeout_s: float = 60.0) -> Iterator[RunningServer]:
    """Serve ``fake`` on 127.0.0.1 from a daemon thread's event loop until the block exits."""
    with serve_in_background(fake, start_timeout_s=start_timeout_s) as background:
        yield background.server


def peak_rss_kb(pid: int, argv: Sequence[str]) -> int:
    """``VmHWM`` (KiB) of ``pid`` once it runs ``argv``; 0 before that, or once it is gone.

    Between fork and exec a child's /proc entry still shows the parent's memory (a test worker's
    few hundred MB, once it has imported pandas and moto): a sample taken in that window would
    charge the parent's size to the command. So the figure counts only when the command line is
    exactly ``argv``, which the kernel sets at exec, when it also starts a fresh high-water mark.
    """
    expected = b"".join(os.fsencode(part) + b"\0" for part in argv)
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes() != expected:
            return 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cli_command(*args: str) -> list[str]:
    """The argv of ``python -m tcia_fetch ARGS`` with this interpreter."""
    return [sys.executable, "-m", "tcia_fetch", *args]


def start_cli(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the CLI; ``PYTHONPATH`` keeps pointing at this source tree."""
    root = str(Path(__file__).resolve().parents[2])
    merged = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    merged["PYTHONPATH"] = os.pathsep.join(p for p in (root, merged.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(cli_command(*args), env=merged, stdout=stdout, stderr=stderr, cwd=cwd)
