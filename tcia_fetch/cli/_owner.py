"""Whether the CLI owns this interpreter (a ``tcia-fetch`` process) or runs inside someone else's.

The console script and ``python -m tcia_fetch`` claim it in ``main()``. Only then may a command
change process-wide state for its own sake: ``catalog`` loads pyarrow without numpy and picks
Arrow's allocator through the environment, which saves memory in a process that exits after
writing two tables, but would break a host process (a notebook, a test worker) that later hands
numpy arrays to that pyarrow (it crashes). Commands invoked in-process, through the click group,
leave the interpreter as they found it.
"""

from __future__ import annotations

__all__ = ["claim_interpreter", "owns_interpreter"]

_owned = False


def claim_interpreter() -> None:
    """Called by the process's entry point, before any command runs."""
    global _owned
    _owned = True


def owns_interpreter() -> bool:
    return _owned
