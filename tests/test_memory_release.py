"""The downloader's heap (``_memory.py``): the CLI process keeps to two malloc arenas and does not
collect garbage while it imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

ARENAS = """
import ctypes, os, sys, tempfile, threading, zlib

from tcia_fetch._memory import limit_malloc_arenas

print(limit_malloc_arenas() if sys.argv[1] == "limit" else "not-asked")
data = os.urandom(1 << 20)

def work():
    for _ in range(30):
        zlib.compress(data, 1)  # allocates without the GIL: threads meet in the arenas

threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = tempfile.mktemp()
handle = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, handle)
libc.fclose(handle)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _heaps(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer, heaps = done.stdout.split()
    return answer, int(heaps)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and malloc_info")
def test_the_cli_process_keeps_to_two_malloc_arenas_unless_the_user_chose() -> None:
    import os

    base = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    assert _heaps("limit", base) == ("True", 2)
    _, heaps = _heaps("none", base)
    assert heaps > 2, "eight threads made no arena of their own: the test proves nothing"
    # A user's own MALLOC_ARENA_MAX is left to glibc.
    assert _heaps("limit", {**base, "MALLOC_ARENA_MAX": "3"}) == ("False", 3)


FROZEN = """
import gc, sys

from tcia_fetch.cli import main

collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
before = gc.get_freeze_count()
sys.argv = ["tcia-fetch", sys.argv[1], "--help"]
try:
    main.main()
except SystemExit:
    pass
print(before, gc.get_freeze_count(), gc.isenabled(), len(collections), file=sys.stderr)
"""


@pytest.mark.parametrize("command", ["run", "status"])
def test_the_cli_imports_its_command_without_collecting_and_freezes_what_it_loaded(command: str) -> None:
    """The objects a command's imports create are never scanned by the collector again, and the
    imports themselves trigger no collection (the collector took 0.12 s of a 600-series run,
    mostly while the run command loaded)."""
    argv = [sys.executable, "-c", FROZEN, command]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, enabled, collections = done.stderr.split()[-4:]
    assert int(before) == 0 and int(after) > 10_000, (before, after)
    assert enabled == "True"
    # printing the help may fill the youngest generation once; importing ``run`` unfrozen
    # triggers dozens of collections
    assert int(collections) <= 2, collections


def test_frozen_imports_leaves_a_host_process_alone() -> None:
    """Inside someone else's interpreter (a notebook) nothing is frozen, and a collector the host
    turned off stays off."""
    import gc

    from tcia_fetch._memory import frozen_imports

    before = gc.get_freeze_count()
    with frozen_imports(enabled=False):
        assert gc.isenabled()
    assert gc.get_freeze_count() == before
    gc.disable()
    try:
        with frozen_imports(enabled=True):
            pass
        assert not gc.isenabled()
        assert gc.get_freeze_count() == before
    finally:
        gc.enable()
