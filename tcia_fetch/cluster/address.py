"""``--scheduler`` values: ``local:N`` (N local worker processes) or a scheduler URL. Pure parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tcia_fetch.errors import InputError

__all__ = ["SchedulerAddress", "parse_scheduler"]

_LOCAL: Final = re.compile(r"^local:(\d+)$")
_REMOTE: Final = re.compile(r"^(tcp|tls)://[^\s/:]+:\d{1,5}/?$")
_MAX_LOCAL_WORKERS: Final = 256


@dataclass(frozen=True, slots=True)
class SchedulerAddress:
    """Either a local cluster of ``local_workers`` processes, or the ``url`` of a running scheduler."""

    url: str | None = None
    local_workers: int | None = None

    def describe(self) -> str:
        return (
            self.url
            if self.url is not None
            else f"a local cluster of {self.local_workers} worker process(es)"
        )


def parse_scheduler(text: str, *, source: str = "--scheduler") -> SchedulerAddress:
    """Check the address before anything connects (a bad one is exit 2, not a timeout)."""
    value = text.strip()
    local = _LOCAL.match(value)
    if local is not None:
        workers = int(local.group(1))
        if not 1 <= workers <= _MAX_LOCAL_WORKERS:
            raise InputError(
                f"local:N needs N between 1 and {_MAX_LOCAL_WORKERS}, got {workers}", source=source
            )
        return SchedulerAddress(local_workers=workers)
    if _REMOTE.match(value):
        return SchedulerAddress(url=value.rstrip("/"))
    raise InputError(
        f"{text!r} is not a scheduler address: give tcp://HOST:PORT of a running Dask scheduler "
        "(or tls://...), or local:N for N local worker processes",
        source=source,
    )
