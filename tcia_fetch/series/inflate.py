"""Raw-deflate inflation and CRC-32 for the streaming zip reader: the only importer of zlib-ng.

Two thirds of a download's CPU went into zlib's inflate (issue 9). zlib-ng is a drop-in
rewrite of zlib with the same API and semantics (``max_length``, ``unconsumed_tail``,
``unused_data``, ``eof``) and SIMD inflate and CRC-32. Measured on the fake server's DICOM-like
zips (``/tmp`` script in the issue-9 report; 2-core reference machine, best of 5): zlib 181-278,
python-isal 434-555, zlib-ng 441-550 MB/s of inflated output with CRC-32. isal and zlib-ng were
level; zlib-ng is chosen for being zlib's own semantics and code base. It is a hard dependency.
"""

from __future__ import annotations

from typing import Protocol, cast

from zlib_ng import zlib_ng

__all__ = ["InflateError", "Inflater", "crc32", "new_raw_inflater"]

#: What a corrupt deflate stream raises (the zip reader turns it into ArchiveCorruptError with
#: the member's name and offset, which only it knows).
InflateError = cast("type[Exception]", zlib_ng.error)


class Inflater(Protocol):
    """The part of a decompress object the zip reader uses."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, max_length: int = 0, /) -> bytes: ...


def new_raw_inflater() -> Inflater:
    """An inflater for a zip member's raw deflate stream (no zlib header, 32 KiB window)."""
    inflater: Inflater = zlib_ng.decompressobj(-zlib_ng.MAX_WBITS)
    return inflater


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32 of ``data`` continuing from ``value`` (zip's checksum)."""
    result: int = zlib_ng.crc32(data, value)
    return result
