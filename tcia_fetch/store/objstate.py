"""``ObjectStateStorage``: the run state of an ``s3://`` destination, under ``<prefix>/.tcia-fetch/``.

Implements :class:`~tcia_fetch.store.statestore.StateStorage` over :mod:`tcia_fetch.store._objstore`:

* ``write`` is a PUT (atomic by nature: readers see the old object or the new one);
* ``create`` is a conditional PUT (``If-None-Match: *``): exactly one of two racing creators wins;
* S3 cannot append, so ``append(log, data)`` PUTs a NEW object ``<log>/<seq:012d>`` per call and
  ``read_log`` lists and concatenates them in sequence order; a log therefore survives a SIGKILL
  up to its last acknowledged append, exactly like a fsynced local segment;
* ``version`` is the ETag.

Synchronous; called from worker threads like the local storage (each call waits in its thread
while the request runs on the event loop, see :class:`~tcia_fetch.store._objstore.BlockingObjectStore`).
"""

from __future__ import annotations

import builtins
import io
import threading
from collections.abc import Iterable
from typing import BinaryIO, Final

from tcia_fetch.errors import JournalError
from tcia_fetch.store._objstore import BlockingObjectStore
from tcia_fetch.store.location import BucketLocation

__all__ = ["STATE_PREFIX", "ObjectStateStorage"]

STATE_PREFIX: Final = ".tcia-fetch"
_SEQ_DIGITS: Final = 12


class ObjectStateStorage:
    """The state area ``s3://bucket/<prefix>/.tcia-fetch/`` of one destination."""

    def __init__(self, store: BlockingObjectStore, location: BucketLocation) -> None:
        self._store = store
        self._root = location.key(STATE_PREFIX) + "/"
        self._location = location
        self._mutex = threading.Lock()
        self._next_seq: dict[str, int] = {}

    def _key(self, name: str) -> str:
        name = name.strip("/")
        if not name or any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"bad state name {name!r}")
        return self._root + name

    def describe(self, name: str) -> str:
        return f"s3://{self._store.bucket}/{self._key(name)}"

    def list(self, prefix: str) -> list[str]:
        start = self._root + prefix.lstrip("/")
        return sorted(info.key[len(self._root) :] for info in self._store.list(start))

    def read(self, name: str) -> bytes | None:
        return self._store.get(self._key(name))

    def read_stream(self, name: str) -> BinaryIO | None:
        data = self.read(name)
        return io.BytesIO(data) if data is not None else None

    def write(self, name: str, data: bytes) -> None:
        self._store.put(self._key(name), data)

    def write_from(self, name: str, chunks: Iterable[bytes]) -> None:
        """Atomic replace from chunks (a large snapshot): streamed into a multipart upload as they
        come (one part in memory, no local copy), one PUT when small; the key changes only when
        the upload completes, and a failing producer aborts it."""
        self._store.upload_chunks(self._key(name), iter(chunks))

    def create(self, name: str, data: bytes) -> bool:
        return self._store.put(self._key(name), data, if_absent=True)

    def delete(self, name: str) -> None:
        self._store.delete(self._key(name))

    def version(self, name: str) -> str | None:
        info = self._store.head(self._key(name))
        return info.etag if info is not None else None

    # --- append-only logs ------------------------------------------------------------------------

    def append(self, log: str, data: bytes) -> None:
        """PUT ``<log>/<seq>``; the sequence continues after whatever the log already holds."""
        with self._mutex:
            seq = self._next_seq.get(log)
            if seq is None:  # continue after the highest part (a half-done delete may leave gaps)
                parts = self._parts(log)
                seq = int(parts[-1].rsplit("/", 1)[-1]) + 1 if parts else 0
            self._next_seq[log] = seq + 1
        # create-exclusive: two writers can never interleave parts of one log undetected
        if not self._store.put(self._key(f"{log}/{seq:0{_SEQ_DIGITS}d}"), data, if_absent=True):
            raise JournalError(f"{self.describe(log)}: part {seq} exists; a log has exactly one writer")

    def read_log(self, log: str) -> bytes:
        return b"".join(self._store.get(key) or b"" for key in self._parts(log))

    def list_logs(self, prefix: str) -> builtins.list[str]:
        logs = set()
        for name in self.list(prefix):
            head, _, tail = name.rpartition("/")
            if head and tail.isdigit() and len(tail) == _SEQ_DIGITS:
                logs.add(head)
        return sorted(logs)

    def delete_log(self, log: str) -> None:
        for key in self._parts(log):
            self._store.delete(key)
        with self._mutex:
            self._next_seq.pop(log, None)

    def _parts(self, log: str) -> builtins.list[str]:
        base = self._key(log) + "/"
        return sorted(
            info.key
            for info in self._store.list(base)
            if info.key[len(base) :].isdigit() and len(info.key) - len(base) == _SEQ_DIGITS
        )
