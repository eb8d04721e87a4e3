"""A query's rows, held between the server's answer and the download pool without holding them all.

A ``getSeries`` answer for a whole collection can have 600,000 rows (issue 13). The planner must
not read it straight into the pool: the pool takes a series only when a download slot frees, so
the server's connection would sit idle for hours, mid-answer, and a proxy or the server would cut
it. Nor may it keep the answer in memory: as row objects that is gigabytes.

So the answer is read at the server's pace into a spool: the first rows stay in memory; past
:data:`MEMORY_ROWS` they go, a batch at a time, to an anonymous temporary file as zlib-compressed
JSON lines (a getSeries row is about 700 bytes of JSON; compressed, about a tenth). The planner
then reads the spool back at the pool's pace. The file has no name (``tempfile.TemporaryFile``):
it disappears with the process, even after SIGKILL.

Pure synchronous code: the planner calls :meth:`RowSpool.add` on the event loop (a list append)
and runs :meth:`RowSpool.spill` and :meth:`RowSpool.read_batch` in a worker thread.
"""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from collections.abc import Mapping
from typing import IO, Final

__all__ = ["MEMORY_ROWS", "SPILL_ROWS", "RowSpool"]

#: Rows kept in memory before the spool starts writing to disk (a few MB of dicts).
MEMORY_ROWS: Final = 4096
#: Rows written per compressed block once spilling (one thread hand-off per block).
SPILL_ROWS: Final = 2048

_HEADER = struct.Struct("<I")


class RowSpool:
    """First-in first-out store of server rows: memory first, then a compressed temporary file.

    Fill it completely (:meth:`add`, :meth:`spill` when :attr:`should_spill`), then drain it
    (:meth:`read_batch` until it returns an empty list). :meth:`reset` empties it for a retried
    query; :meth:`close` frees the file.
    """

    def __init__(self, *, memory_rows: int = MEMORY_ROWS, spill_rows: int = SPILL_ROWS) -> None:
        self._memory_rows = memory_rows
        self._spill_rows = spill_rows
        self._head: list[Mapping[str, object]] = []  # rows before the first spill, in memory
        self._tail: list[Mapping[str, object]] = []  # rows after it, waiting for the next block
        self._file: IO[bytes] | None = None
        self._blocks = 0
        self._read_blocks = 0
        self._read_head = False
        self.rows = 0

    @property
    def should_spill(self) -> bool:
        """True when :meth:`spill` should run (in a worker thread) before more rows are added."""
        return len(self._tail) >= self._spill_rows or (
            self._file is None and len(self._head) >= self._memory_rows
        )

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def add(self, row: Mapping[str, object]) -> None:
        """Keep one row (cheap: a list append)."""
        (self._tail if self._file is not None else self._head).append(row)
        self.rows += 1

    def spill(self) -> None:
        """Write the rows waiting in memory to the file as one compressed block (blocking)."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="tcia-fetch-rows-")  # noqa: SIM115 (kept open)
            # The head stays in memory (it is read first); only what comes after is written.
            return
        if not self._tail:
            return
        lines = "\n".join(json.dumps(row, separators=(",", ":")) for row in self._tail).encode()
        block = zlib.compress(lines, 1)
        self._file.write(_HEADER.pack(len(block)))
        self._file.write(block)
        self._blocks += 1
        self._tail = []

    def finish(self) -> None:
        """All rows are in: write the last block and rewind for reading (blocking)."""
        if self._file is not None:
            self.spill()
            self._file.flush()
            self._file.seek(0)

    def read_batch(self) -> list[Mapping[str, object]]:
        """The next rows in arrival order; an empty list once all were read (blocking)."""
        if not self._read_head:
            self._read_head = True
            head, self._head = self._head, []
            if head:
                return head
        if self._file is None or self._read_blocks >= self._blocks:
            return []
        (size,) = _HEADER.unpack(self._file.read(_HEADER.size))
        block = zlib.decompress(self._file.read(size))
        self._read_blocks += 1
        rows: list[Mapping[str, object]] = [json.loads(line) for line in block.split(b"\n")]
        return rows

    def reset(self) -> None:
        """Forget every row (a retried query starts over)."""
        self.close()
        self._head, self._tail = [], []
        self._blocks = self._read_blocks = self.rows = 0
        self._read_head = False

    def close(self) -> None:
        """Delete the file (blocking: a close); rows still unread are lost."""
        if self._file is not None:
            self._file.close()
            self._file = None
