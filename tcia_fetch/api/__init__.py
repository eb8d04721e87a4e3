"""NBIA API knowledge (sans-I/O endpoints, parameters, parsers, row models) and the async client.

``NBIAClient`` is imported lazily: the transport imports this package's pure modules, and
importing the client (and aiohttp) eagerly here would make that circular and slow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcia_fetch.api.models import (
    PatientRow,
    SeriesMetadataRow,
    SeriesRow,
    SeriesSize,
    ServerRow,
    SopInstanceRow,
    StudyRow,
    ValueCount,
    ValueList,
)

if TYPE_CHECKING:
    from tcia_fetch.api.client import NBIAClient

__all__ = [
    "NBIAClient",
    "PatientRow",
    "SeriesMetadataRow",
    "SeriesRow",
    "SeriesSize",
    "ServerRow",
    "SopInstanceRow",
    "StudyRow",
    "ValueCount",
    "ValueList",
]


def __getattr__(name: str) -> Any:
    if name == "NBIAClient":
        from tcia_fetch.api.client import NBIAClient

        return NBIAClient
    raise AttributeError(f"module 'tcia_fetch.api' has no attribute {name!r}")
