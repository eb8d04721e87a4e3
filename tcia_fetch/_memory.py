"""Keep the downloader's heap small and its start quick: few malloc arenas, imports frozen.

glibc gives each thread that meets a busy arena a new one, up to eight per core, and each arena
keeps its own freed pages. A run's worker threads (inflate, hashing, file writes) need no more
than two: nearly every large allocation happens with the GIL held, so they hardly ever contend.
Limiting them is the CLI's choice for its own process (``limit_malloc_arenas``), never a
library's; measured on the mem64 benchmark (96 series at concurrency 64): the downloader's peak
fell from 102-105 MB to 97 MB on a 2-core machine. A user's own ``MALLOC_ARENA_MAX`` wins.

Only glibc has ``mallopt``; elsewhere (musl, macOS) ``limit_malloc_arenas`` is a no-op.

A command's imports (aiohttp, pydantic, the engine: some 90,000 tracked objects for ``run``, nearly
all alive until exit; the garbage among them, about 0.8 MB, stays frozen) are made with the cycle
collector off and then frozen (``frozen_imports``): otherwise
the collector runs dozens of times while they load and every full collection of the run walks them
all again. Measured on the tiny600 benchmark (600 small series): the collector's time in a run
fell from 0.12 s to 0.03 s, most of it before the first request.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections.abc import Iterator

__all__ = ["frozen_imports", "limit_malloc_arenas"]

#: glibc's ``mallopt`` parameter number for the arena limit (malloc.h: ``M_ARENA_MAX``).
_M_ARENA_MAX = -8
_ARENAS = 2


def limit_malloc_arenas(arenas: int = _ARENAS) -> bool:
    """At most ``arenas`` malloc arenas from now on (call before threads start); True when set.

    A no-op outside glibc, and when the user set ``MALLOC_ARENA_MAX`` (glibc already obeys it).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


@contextlib.contextmanager
def frozen_imports(*, enabled: bool) -> Iterator[None]:
    """Import inside with the cycle collector off; afterwards move every object alive into the
    collector's permanent generation, which it never scans again (``gc.freeze``).

    Only for a process the CLI owns (``enabled``): freezing a host's objects (a notebook's) would
    keep their garbage cycles alive for good. A collector the host turned off stays off.
    """
    if not enabled or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
