"""Where a destination's run state lives: the agreed StateStorage protocol.

The run state (journal segments, snapshot, lock, reports, last plan) is stored either in a local
directory (``<dest>/.tcia-fetch/``) or under a bucket prefix (``s3://b/p/.tcia-fetch/``). Its I/O
goes through this small synchronous protocol, called from worker threads. Names are
'/'-separated and relative to the state root.
"""

from __future__ import annotations

import builtins
from typing import BinaryIO, Protocol

__all__ = ["StateStorage"]


class StateStorage(Protocol):
    """The run-state area of one destination. Names are '/'-separated, relative to the state root."""

    def describe(self, name: str) -> str: ...  # human-readable location for messages
    def list(self, prefix: str) -> list[str]: ...  # names of stored objects/files under prefix, sorted
    def read(self, name: str) -> bytes | None: ...  # whole content; None if absent
    def read_stream(self, name: str) -> BinaryIO | None: ...  # streaming read (big snapshots); None if absent
    def write(self, name: str, data: bytes) -> None: ...  # atomic whole replace; durable when it returns
    def create(self, name: str, data: bytes) -> bool: ...  # exclusive create; False if it already exists
    def delete(self, name: str) -> None: ...  # absent is fine
    def version(self, name: str) -> str | None: ...  # changes when the content is replaced; None if absent
    # Append-only logs (journal segments): a log is owned by exactly one writer.
    def append(self, log: str, data: bytes) -> None: ...  # durably add data to the end of `log` (creates it)
    def read_log(self, log: str) -> bytes: ...  # everything appended to `log` so far ("" if none)
    def list_logs(self, prefix: str) -> builtins.list[str]: ...  # names of logs under prefix, sorted
    def delete_log(self, log: str) -> None: ...
