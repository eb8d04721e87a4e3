"""Freed heap memory goes back to the OS before the catalog child starts (``_memory.py``)."""

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
