"""Run the fake server on a background thread and the real CLI as a child process.

The campaign drives ``python -m tcia_fetch run`` exactly as a user does (so SIGKILL, exit codes,
stdout/stderr and ``/proc/<pid>/cmdline`` are the real ones), while the fake stays in this
process, where its catalog (ground truth), request log and counters can be read directly.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tcia_fetch.testing import FakeNBIA, RunningServer

__all__ = ["cli_command", "serve_in_thread", "start_cli"]


@contextmanager
def serve_in_thread(fake: FakeNBIA, *, start_timeout_s: float = 60.0) -> Iterator[RunningServer]:
    """Serve ``fake`` on 127.0.0.1 from a daemon thread's event loop until the block exits."""
    ready = threading.Event()
    holder: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    async def main(stop: asyncio.Event) -> None:
        try:
            async with fake.serve() as server:
                holder["server"] = server
                ready.set()
                await stop.wait()
        except BaseException as exc:  # reported to the caller below
            holder["error"] = exc
            ready.set()

    stop_event: list[asyncio.Event] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        stop_event.append(stop)
        loop.run_until_complete(main(stop))
        loop.close()

    thread = threading.Thread(target=run, name="fake-nbia", daemon=True)
    thread.start()
    if not ready.wait(start_timeout_s):
        raise TimeoutError("the fake server did not start")
    if "error" in holder:
        raise RuntimeError(f"the fake server failed to start: {holder['error']!r}")
    server = holder["server"]
    assert isinstance(server, RunningServer)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop_event[0].set)
        thread.join(timeout=30)


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
