"""Named crash points: a test hook that SIGKILLs the process at an exact instant.

Reliability tests need to kill a run *inside* a window a few microseconds wide (between writing
a lock's temporary file and linking it into place, inside a lock takeover, right after a
publish rename); a random SIGKILL almost never lands there. The code marks such instants with
``crash_point("lock.after_link")``; a test sets ``TCIA_FETCH_CRASHPOINT=lock.after_link`` in the
environment of the process it starts, and that process dies by SIGKILL (no cleanup, no
``finally``, exactly like the OOM killer or a scheduler's time limit) the first time it reaches
the point. reliability.md describes the hook as ``TCIA_FETCH_CRASHPOINT=publish.after_rename``.

The variable is read at each call, never at import, so a test can set it in a child's
environment without reloading anything. When it is unset a call costs one dictionary lookup.
This is a test hook, not a feature: nothing in a normal run sets the variable.

The names in :data:`CRASH_POINTS` are the only ones the code uses; the tests and the crash
campaign iterate over :data:`STARTUP_CRASH_POINTS`.
"""

from __future__ import annotations

import os
import signal
from typing import Final

__all__ = ["CRASH_POINTS", "CRASH_POINT_ENV", "STARTUP_CRASH_POINTS", "crash_point"]

CRASH_POINT_ENV: Final = "TCIA_FETCH_CRASHPOINT"

#: Every instant of start-up where a kill must not block the next run, in the order a run meets
#: them. ``takeover.*`` points are reached only when the run takes over a dead run's lock.
STARTUP_CRASH_POINTS: Final = (
    "lock.before_link",  # the lock's temporary file is written and fsynced, not yet linked
    "takeover.before_link",  # the takeover mutex's temporary file is written, not yet linked
    "takeover.after_link",  # the takeover mutex is held, its temporary file not yet removed
    "takeover.before_set_aside",  # the takeover mutex is held, the stale lock still in place
    "takeover.after_set_aside",  # the stale lock is moved aside, not yet removed; mutex held
    "lock.after_link",  # the lock is held, its temporary file not yet removed
    "journal.after_open",  # the lock is held and the journal read
    "reconcile.after_cleanup",  # reconciliation removed the leftovers, journal not yet repaired
)

#: Every point the code defines (start-up, plus the publish rename reliability.md names).
CRASH_POINTS: Final = (*STARTUP_CRASH_POINTS, "publish.after_rename")


def crash_point(name: str) -> None:
    """SIGKILL this process if ``TCIA_FETCH_CRASHPOINT`` equals ``name``; otherwise do nothing."""
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
