"""The zip records a streaming reader meets, as PKWARE's APPNOTE (6.3.x) lays them out.

Only layouts and pure decoding live here: fixed-size structs, the zip64 extended-information
extra field, and what the central directory's attributes say about a member's file type. The
state machine that meets these records in a byte stream is :mod:`tcia_fetch.series.zipstream`.
Every decoding problem raises :class:`~tcia_fetch.errors.ArchiveCorruptError`.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from typing import Literal

from tcia_fetch.errors import ArchiveCorruptError

__all__ = [
    "CENTRAL_SIG",
    "DESCRIPTOR_SIG",
    "EOCD_SIG",
    "FLAG_DATA_DESCRIPTOR",
    "FLAG_ENCRYPTED",
    "FLAG_MASKED_HEADERS",
    "FLAG_STRONG_ENCRYPTION",
    "FLAG_UTF8",
    "LOCAL_SIG",
    "MAGIC16",
    "MAGIC32",
    "METHOD_DEFLATED",
    "METHOD_STORED",
    "ZIP64_EOCD_SIG",
    "ZIP64_LOCATOR_SIG",
    "CentralEntry",
    "FileType",
    "Zip64Values",
    "decode_name",
    "file_type_from_attributes",
    "parse_zip64_extra",
]

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
EOCD_SIG = b"PK\x05\x06"
ZIP64_EOCD_SIG = b"PK\x06\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
DESCRIPTOR_SIG = b"PK\x07\x08"

METHOD_STORED = 0
METHOD_DEFLATED = 8

FLAG_ENCRYPTED = 0x0001
FLAG_DATA_DESCRIPTOR = 0x0008
FLAG_STRONG_ENCRYPTION = 0x0040
FLAG_UTF8 = 0x0800
FLAG_MASKED_HEADERS = 0x2000

#: A 32-bit (16-bit) field holding this value defers to the zip64 record or extra field.
MAGIC32 = 0xFFFFFFFF
MAGIC16 = 0xFFFF

ZIP64_EXTRA_ID = 0x0001
UNIX_HOST = 3
MSDOS_DIRECTORY_ATTRIBUTE = 0x10

#: signature, version needed, flags, method, time, date, crc, csize, usize, name len, extra len
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
#: signature, made by, needed, flags, method, time, date, crc, csize, usize, name len, extra len,
#: comment len, disk start, internal attrs, external attrs, local header offset
CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")
#: signature, this disk, cd disk, entries here, entries total, cd size, cd offset, comment len
EOCD = struct.Struct("<4sHHHHIIH")
#: (after signature and record size) made by, needed, this disk, cd disk, entries here,
#: entries total, cd size, cd offset
ZIP64_EOCD_BODY = struct.Struct("<HHIIQQQQ")
#: signature, disk holding the zip64 EOCD, its offset, total disks
ZIP64_LOCATOR = struct.Struct("<4sIQI")
DESCRIPTOR32 = struct.Struct("<III")
DESCRIPTOR64 = struct.Struct("<IQQ")
_EXTRA_HEADER = struct.Struct("<HH")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

FileType = Literal["regular", "directory", "symlink", "other"]


@dataclass(frozen=True, slots=True)
class Zip64Values:
    """Values found in a zip64 extended-information extra field (None where absent)."""

    uncompressed_size: int | None = None
    compressed_size: int | None = None
    header_offset: int | None = None
    disk_start: int | None = None


@dataclass(frozen=True, slots=True)
class CentralEntry:
    """One central directory entry after zip64 resolution, as the archive's index states it."""

    index: int
    name: str
    crc32: int
    compressed_size: int
    uncompressed_size: int
    header_offset: int
    file_type: FileType
    unix_mode: int | None


def decode_name(raw: bytes, flags: int) -> str:
    """Decode a member name: UTF-8 when flag bit 11 says so, else IBM code page 437.

    Undecodable UTF-8 becomes U+FFFD rather than an error: the name policy rejects it anyway,
    with a message that shows the name.
    """
    if flags & FLAG_UTF8:
        return raw.decode("utf-8", errors="replace")
    return raw.decode("cp437")


def parse_zip64_extra(
    extra: bytes,
    *,
    want_uncompressed: bool,
    want_compressed: bool,
    want_offset: bool,
    want_disk: bool,
    where: str,
) -> Zip64Values | None:
    """Read the zip64 field from ``extra``; None when there is none.

    APPNOTE 4.5.3: the field holds, in this order, only the values whose 32-bit (16-bit) slot
    in the header holds the magic value. A field too short for the values the header defers
    to it, or a malformed extra block, is corruption.
    """
    found: Zip64Values | None = None
    position = 0
    while position + _EXTRA_HEADER.size <= len(extra):
        header_id, size = _EXTRA_HEADER.unpack_from(extra, position)
        body_start = position + _EXTRA_HEADER.size
        if body_start + size > len(extra):
            raise ArchiveCorruptError(
                f"{where}: extra field 0x{header_id:04x} claims {size} bytes but only "
                f"{len(extra) - body_start} remain"
            )
        if header_id == ZIP64_EXTRA_ID:
            if found is not None:
                raise ArchiveCorruptError(f"{where}: two zip64 extra fields")
            found = _read_zip64_body(
                extra[body_start : body_start + size],
                (want_uncompressed, want_compressed, want_offset, want_disk),
                where,
            )
        position = body_start + size
    return found


def _read_zip64_body(body: bytes, wanted: tuple[bool, bool, bool, bool], where: str) -> Zip64Values:
    values: list[int | None] = []
    position = 0
    for index, want in enumerate(wanted):
        if not want:
            values.append(None)
            continue
        width = _U32.size if index == 3 else _U64.size
        if position + width > len(body):
            raise ArchiveCorruptError(f"{where}: zip64 extra field of {len(body)} bytes is too short")
        unpacker = _U32 if index == 3 else _U64
        values.append(unpacker.unpack_from(body, position)[0])
        position += width
    return Zip64Values(*values)


def file_type_from_attributes(made_by: int, external_attributes: int) -> tuple[FileType, int | None]:
    """What kind of file a central directory entry describes, and its unix mode if stated.

    A unix host (``made_by >> 8 == 3``) keeps ``st_mode`` in the high 16 bits; a zero file-type
    part means "not stated" and counts as a regular file (Python's zipfile writes 0o600 only).
    The MS-DOS directory attribute marks a directory whatever the host.
    """
    unix_mode: int | None = None
    if made_by >> 8 == UNIX_HOST:
        unix_mode = (external_attributes >> 16) & 0xFFFF
        kind = stat.S_IFMT(unix_mode)
        if kind == stat.S_IFLNK:
            return "symlink", unix_mode
        if kind == stat.S_IFDIR:
            return "directory", unix_mode
        if kind not in (0, stat.S_IFREG):
            return "other", unix_mode
    if external_attributes & MSDOS_DIRECTORY_ATTRIBUTE:
        return "directory", unix_mode
    return "regular", unix_mode
