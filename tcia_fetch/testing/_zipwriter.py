"""A streaming ZIP writer shaped like Java's ``ZipOutputStream`` (pure, synchronous, no I/O).

The real server writes its zips with ``java.util.zip.ZipOutputStream`` straight to the socket, so every
entry is DEFLATE-compressed, has general-purpose flag bit 3 set (CRC and sizes are zero in the local
header and follow the data in a ``PK\\x07\\x08`` data descriptor), and the central directory comes last.
This writer produces exactly those bytes, piece by piece, so the server can send each piece as soon as
it exists and never holds a whole archive. The caller compresses member data itself (that allows
caching deflated pixel data and byte-level fault injection) and hands in CRC and sizes at the end.

ZIP64: when a local header offset, the central directory offset/size or the entry count exceed the
classic limits, the central directory uses a ZIP64 extra field and a ZIP64 end record plus locator are
written, as Java does for multi-GB series. ``force_zip64`` exercises that path in tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ZipStreamWriter"]

_LOCAL_SIGNATURE = 0x04034B50
_DESCRIPTOR_SIGNATURE = 0x08074B50
_CENTRAL_SIGNATURE = 0x02014B50
_END_SIGNATURE = 0x06054B50
_ZIP64_END_SIGNATURE = 0x06064B50
_ZIP64_LOCATOR_SIGNATURE = 0x07064B50
_FLAG_DATA_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_METHOD_DEFLATED = 8
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF


@dataclass(frozen=True, slots=True)
class _Entry:
    name: bytes
    flags: int
    crc: int
    compressed_size: int
    uncompressed_size: int
    offset: int


class ZipStreamWriter:
    """Emits the byte pieces of a zip archive in order; tracks offsets for the central directory.

    Use: ``local_header(name)``, then the member's compressed bytes (counted with ``add_data``), then
    ``data_descriptor(crc, compressed_size, uncompressed_size)``; finally ``finish()``.
    """

    def __init__(self, *, dos_date: int, dos_time: int, force_zip64: bool = False) -> None:
        self._dos_date = dos_date
        self._dos_time = dos_time
        self._force_zip64 = force_zip64
        self._offset = 0
        self._entries: list[_Entry] = []
        self._open: tuple[bytes, int, int] | None = None

    @property
    def offset(self) -> int:
        """Bytes emitted so far."""
        return self._offset

    def local_header(self, name: str) -> bytes:
        """Start a member: the local file header with zeroed CRC/sizes (flag bit 3)."""
        if self._open is not None:
            raise RuntimeError("previous member not finished")
        encoded = name.encode("utf-8")
        flags = _FLAG_DATA_DESCRIPTOR | (0 if encoded.isascii() else _FLAG_UTF8)
        header = (
            struct.pack(
                "<IHHHHHIIIHH",
                _LOCAL_SIGNATURE,
                20,
                flags,
                _METHOD_DEFLATED,
                self._dos_time,
                self._dos_date,
                0,
                0,
                0,
                len(encoded),
                0,
            )
            + encoded
        )
        self._open = (encoded, flags, self._offset)
        self._offset += len(header)
        return header

    def add_data(self, length: int) -> None:
        """Account for ``length`` bytes of compressed member data the caller sent."""
        self._offset += length

    def data_descriptor(self, crc: int, compressed_size: int, uncompressed_size: int) -> bytes:
        """Finish the member: the data descriptor (signature, CRC-32, 32-bit sizes)."""
        if self._open is None:
            raise RuntimeError("no member open")
        if compressed_size > _U32_MAX or uncompressed_size > _U32_MAX:
            raise ValueError("members of 4 GiB or more are not supported by the fake server")
        name, flags, offset = self._open
        self._open = None
        self._entries.append(
            _Entry(
                name=name,
                flags=flags,
                crc=crc & _U32_MAX,
                compressed_size=compressed_size,
                uncompressed_size=uncompressed_size,
                offset=offset,
            )
        )
        descriptor = struct.pack(
            "<IIII", _DESCRIPTOR_SIGNATURE, crc & _U32_MAX, compressed_size, uncompressed_size
        )
        self._offset += len(descriptor)
        return descriptor

    def finish(self) -> bytes:
        """The central directory and end records; the archive is complete after these bytes."""
        if self._open is not None:
            raise RuntimeError("member not finished")
        pieces: list[bytes] = []
        directory_offset = self._offset
        for entry in self._entries:
            big_offset = self._force_zip64 or entry.offset >= _U32_MAX
            extra = struct.pack("<HHQ", 0x0001, 8, entry.offset) if big_offset else b""
            pieces.append(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    _CENTRAL_SIGNATURE,
                    45 if big_offset else 20,
                    45 if big_offset else 20,
                    entry.flags,
                    _METHOD_DEFLATED,
                    self._dos_time,
                    self._dos_date,
                    entry.crc,
                    entry.compressed_size,
                    entry.uncompressed_size,
                    len(entry.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    _U32_MAX if big_offset else entry.offset,
                )
                + entry.name
                + extra
            )
        directory = b"".join(pieces)
        directory_size = len(directory)
        count = len(self._entries)
        need_zip64 = (
            self._force_zip64
            or count >= _U16_MAX
            or directory_offset >= _U32_MAX
            or directory_size >= _U32_MAX
        )
        tail = b""
        if need_zip64:
            zip64_end_offset = directory_offset + directory_size
            tail += struct.pack(
                "<IQHHIIQQQQ",
                _ZIP64_END_SIGNATURE,
                44,
                45,
                45,
                0,
                0,
                count,
                count,
                directory_size,
                directory_offset,
            )
            tail += struct.pack("<IIQI", _ZIP64_LOCATOR_SIGNATURE, 0, zip64_end_offset, 1)
        tail += struct.pack(
            "<IHHHHIIH",
            _END_SIGNATURE,
            0,
            0,
            min(count, _U16_MAX) if not need_zip64 else _U16_MAX,
            min(count, _U16_MAX) if not need_zip64 else _U16_MAX,
            _U32_MAX if need_zip64 else directory_size,
            _U32_MAX if need_zip64 else directory_offset,
            0,
        )
        out = directory + tail
        self._offset += len(out)
        return out
