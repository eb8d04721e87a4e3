"""Helper processes that must not outlive the run that started them.

A run writes its Parquet catalog through a short-lived ``tcia-fetch catalog DEST`` child (see
``engine/run.py``). If the run is SIGKILLed meanwhile, an orphaned child would go on writing the
catalog, and uploading it into a bucket, beside the next run: at best wasted work, at worst an
older catalog replacing a newer one, or a multipart upload open while the next run checks that
none is. The run names itself in ``TCIA_FETCH_PARENT_PID``; the child asks the kernel to SIGKILL
it when that parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and checks that the parent has not
already gone before it asked. Elsewhere (no prctl) only that check is made.

The kernel sends the signal when the parent THREAD that started the child ends; the run starts
the child from a worker thread that waits for it (``subprocess.run``), so that thread outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Final

__all__ = ["PARENT_PID_ENV", "child_env", "die_with_parent"]

PARENT_PID_ENV: Final = "TCIA_FETCH_PARENT_PID"
_PR_SET_PDEATHSIG: Final = 1


def child_env() -> dict[str, str]:
    """The environment for a helper child of this process (this process named as its parent)."""
    return {**os.environ, PARENT_PID_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a helper child: be SIGKILLed when the parent named in the environment dies.

    A no-op when the variable is absent (a user ran the command), so only helper children are
    tied to their parent.
    """
    text = os.environ.get(PARENT_PID_ENV)
    if not text or not text.isdigit():
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(text):  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGKILL)
