"""The two facts the extractor reads from a DICOM file's first bytes, without pydicom.

A Part-10 file has a 128-byte preamble, ``DICM``, then the File Meta group (0002,xxxx), always
in explicit VR little endian (PS3.10 §7.1). Checking the magic catches HTML pages, zero-filled
or truncated files served as ``.dcm``; the meta group's MediaStorageSOPClassUID (0002,0002)
says what kind of object the series holds, for ``metadata.csv``.
"""

from __future__ import annotations

import struct

from tcia_fetch.uid import is_valid_uid

__all__ = ["DICOM_HEAD_BYTES", "DICOM_MAGIC", "DICOM_MAGIC_END", "has_dicom_magic", "read_sop_class_uid"]

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_END = 132
#: How much of the first instance is kept for the meta-group walk; the group is a few hundred
#: bytes in practice.
DICOM_HEAD_BYTES = 4096

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG_VR = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_META_GROUP = 0x0002
_MEDIA_STORAGE_SOP_CLASS = 0x0002


def has_dicom_magic(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) carries ``DICM`` at offset 128."""
    return head[128:DICOM_MAGIC_END] == DICOM_MAGIC


def read_sop_class_uid(head: bytes) -> str | None:
    """MediaStorageSOPClassUID from the File Meta group in ``head``; None if absent or malformed."""
    if not has_dicom_magic(head):
        return None
    position = DICOM_MAGIC_END
    while position + _TAG_VR.size + 2 <= len(head):
        group, element, vr = _TAG_VR.unpack_from(head, position)
        if group != _META_GROUP:
            return None
        if vr in _LONG_VRS:
            if position + 12 > len(head):
                return None
            length = _U32.unpack_from(head, position + 8)[0]
            value_start = position + 12
        else:
            length = _U16.unpack_from(head, position + 6)[0]
            value_start = position + 8
        value_end = value_start + length
        if length == 0xFFFFFFFF or value_end > len(head):
            return None
        if element == _MEDIA_STORAGE_SOP_CLASS:
            text = head[value_start:value_end].rstrip(b"\x00 ").decode("ascii", errors="replace")
            return text if is_valid_uid(text) else None
        position = value_end
    return None
