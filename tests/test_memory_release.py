"""The downloader's heap (``_memory.py``): freed memory goes back to the OS before the catalog
child starts, and the CLI process keeps to two malloc arenas."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
from tcia_fetch._memory import release_free_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

blocks = [bytes(2048) + bytes([i % 256]) for i in range(100_000)]  # ~200 MB on the malloc heap
pinned = bytes(2048) + b"!"  # allocated last: the heap's top stays in use, so free() cannot trim it
del blocks
held = rss_mb()
assert release_free_memory()
print(round(held), round(rss_mb()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim and /proc are Linux's")
def test_freed_heap_pages_are_returned_to_the_os() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    held, after = (float(value) for value in done.stdout.split())
    assert held > 150, f"the freed blocks were already returned ({held} MB): the test proves nothing"
    assert held - after > 150, (held, after)


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
