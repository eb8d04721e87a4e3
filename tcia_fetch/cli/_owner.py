"""Whether the CLI owns this interpreter (a ``tcia-fetch`` process) or runs inside someone else's.

The console script and ``python -m tcia_fetch`` claim it in ``main()``. Only then may the CLI
change process-wide state for its own sake: it freezes the objects a command's imports created
(``_memory.frozen_imports``), which would keep a host process's (a notebook's, a test worker's)
garbage alive for good. Commands invoked in-process, through the click group, leave the
interpreter as they found it.
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
