"""Build series archives for the tests: like NBIA's (stdlib zipfile on a non-seekable sink) or by hand.

``zipfile`` writing to a sink that cannot seek must put sizes and CRC after the data (flag bit 3,
data descriptors with a signature), exactly the shape Java's ZipOutputStream streams. Where a
test needs an archive ``zipfile`` refuses to write (lying sizes, symlink attributes, encryption
flags, duplicate names, overlapping entries), :func:`build_raw_zip` lays out every record by hand
from :class:`RawMember` descriptions, with an override for each field.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcia_fetch.series.expectation import SeriesExpectation

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000001"
LICENSE_TEXT = (
    b"License Information. The TEST collection is distributed under the CC BY 4.0 at "
    b"https://creativecommons.org/licenses/by/4.0/ By downloading the data, you agree to abide by "
    b"terms of this license.\n"
)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def make_dicom(size: int, seed: int, *, sop_class_uid: str = CT_IMAGE_STORAGE) -> bytes:
    """A Part-10 file of exactly ``size`` bytes: preamble, DICM, a real meta group, then noise.

    The noise is low-entropy (like 12-bit pixels in 16-bit words) so it deflates about 2:1.
    """
    instance_uid = f"1.2.826.0.1.3680043.8.498.{seed + 1}"
    elements = (
        _element(2, 0x0001, b"OB", b"\x00\x01")
        + _element(2, 0x0002, b"UI", sop_class_uid.encode())
        + _element(2, 0x0003, b"UI", instance_uid.encode())
        + _element(2, 0x0010, b"UI", EXPLICIT_VR_LE.encode())
    )
    meta = _element(2, 0x0000, b"UL", struct.pack("<I", len(elements))) + elements
    head = b"\x00" * 128 + b"DICM" + meta
    if size < len(head):
        raise ValueError(f"a DICOM file needs at least {len(head)} bytes")
    return head + noise(size - len(head), seed)


_NOISE_RNG = random.Random(12345)
_NOISE_BLOCK = bytes(_NOISE_RNG.getrandbits(4) for _ in range(1 << 16))


def noise(size: int, seed: int) -> bytes:
    """``size`` bytes of half-entropy data, different per seed, without a per-byte Python loop."""
    rotate = (seed * 7919) % len(_NOISE_BLOCK)
    block = _NOISE_BLOCK[rotate:] + _NOISE_BLOCK[:rotate]
    salt = hashlib.sha256(str(seed).encode()).digest()
    parts: list[bytes] = []
    produced = 0
    counter = 0
    while produced < size:
        stamp = salt + counter.to_bytes(8, "little")
        part = stamp + block[: (1 << 16) - len(stamp)]
        parts.append(part)
        produced += len(part)
        counter += 1
    return b"".join(parts)[:size]


class NonSeekableSink(io.RawIOBase):
    """A write-only stream that cannot seek or tell, like an HTTP response body."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)


@dataclass
class SeriesArchive:
    """A built archive and the figures a server would have reported for it."""

    body: bytes
    expectation: SeriesExpectation
    dicom: dict[str, bytes]
    license: bytes | None
    md5_csv: bytes | None

    def md5s(self) -> dict[str, str]:
        return {name: hashlib.md5(data).hexdigest() for name, data in self.dicom.items()}


def dicom_names(count: int, *, new_file_names: bool = False) -> list[str]:
    """NBIA's member names: ``00000001.dcm`` or, with NewFileNames=Yes, ``1-001.dcm``."""
    if new_file_names:
        width = len(str(count))
        return [f"1-{index:0{width}d}.dcm" for index in range(1, count + 1)]
    return [f"{index:08d}.dcm" for index in range(1, count + 1)]


def md5_csv_for(files: dict[str, bytes], *, seed: int = 0) -> bytes:
    """``Filename,MD5Hash`` then one row per file, in a shuffled (hash-map-like) order."""
    rows = [f"{name},{hashlib.md5(data).hexdigest()}\n" for name, data in files.items()]
    random.Random(seed).shuffle(rows)
    return ("Filename,MD5Hash\n" + "".join(rows)).encode()


def zip_streamed(
    members: Iterable[tuple[str, bytes]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
    force_zip64: bool = False,
    comment: bytes = b"",
) -> bytes:
    """A zip written by stdlib zipfile to a non-seekable sink (bit-3 data descriptors)."""
    sink = NonSeekableSink()
    with zipfile.ZipFile(sink, "w", compression=compression) as archive:
        archive.comment = comment
        for name, data in members:
            with archive.open(name, "w", force_zip64=force_zip64) as member:
                member.write(data)
    return bytes(sink.buffer)


def build_series(
    count: int = 5,
    *,
    sizes: Sequence[int] | None = None,
    new_file_names: bool = False,
    license: bool = True,
    md5: bool = True,
    seed: int = 0,
    compression: int = zipfile.ZIP_DEFLATED,
    force_zip64: bool = False,
    series_uid: str = SERIES_UID,
) -> SeriesArchive:
    """An NBIA-shaped series zip: LICENSE, the instances, md5hashes.csv; and its expectation."""
    names = dicom_names(count, new_file_names=new_file_names)
    if sizes is None:
        sizes = [2000 + 611 * index for index in range(count)]
    dicom = {
        name: make_dicom(size, seed * 1000 + index)
        for index, (name, size) in enumerate(zip(names, sizes, strict=True))
    }
    members: list[tuple[str, bytes]] = []
    if license:
        members.append(("LICENSE", LICENSE_TEXT))
    members.extend(dicom.items())
    csv = md5_csv_for(dicom, seed=seed) if md5 else None
    if csv is not None:
        members.append(("md5hashes.csv", csv))
    body = zip_streamed(members, compression=compression, force_zip64=force_zip64)
    expectation = SeriesExpectation(series_uid, count, sum(len(data) for data in dicom.values()))
    return SeriesArchive(body, expectation, dicom, LICENSE_TEXT if license else None, csv)


# --- archives by hand --------------------------------------------------------------------------


@dataclass
class RawMember:
    """One member of a hand-built zip; every ``None`` override means "the honest value"."""

    name: bytes
    data: bytes
    method: int = 8
    flags: int = 0x0008
    descriptor_signature: bool = True
    zip64: bool = False
    payload: bytes | None = None
    local_name: bytes | None = None
    local_crc: int | None = None
    local_csize: int | None = None
    local_usize: int | None = None
    descriptor: tuple[int, int, int] | None = None
    made_by: int = 20
    external_attr: int = 0
    cd_name: bytes | None = None
    cd_flags: int | None = None
    cd_crc: int | None = None
    cd_csize: int | None = None
    cd_usize: int | None = None
    cd_offset: int | None = None
    omit_from_cd: bool = False
    extra_cd_copies: int = 0


@dataclass
class RawLayout:
    """Where each record of a hand-built zip landed (for truncation and bit-flip campaigns)."""

    local_offsets: list[int] = field(default_factory=list)
    payload_spans: list[tuple[int, int]] = field(default_factory=list)
    descriptor_offsets: list[int] = field(default_factory=list)
    central_offset: int = 0
    eocd_offset: int = 0


def compress_raw(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def build_raw_zip(
    members: Sequence[RawMember],
    *,
    comment: bytes = b"",
    zip64_end: bool = False,
    eocd_count: int | None = None,
    eocd_cd_size: int | None = None,
    eocd_cd_offset: int | None = None,
    trailing: bytes = b"",
    layout: RawLayout | None = None,
) -> bytes:
    """Lay out local headers, data, descriptors, central directory and end records by hand."""
    out = bytearray()
    central: list[bytes] = []
    for member in members:
        offset = len(out)
        crc = zlib.crc32(member.data)
        payload = member.payload
        if payload is None:
            payload = compress_raw(member.data) if member.method == 8 else member.data
        csize, usize = len(payload), len(member.data)
        streamed = bool(member.flags & 0x0008)
        local_crc = member.local_crc if member.local_crc is not None else (0 if streamed else crc)
        local_csize = member.local_csize if member.local_csize is not None else (0 if streamed else csize)
        local_usize = member.local_usize if member.local_usize is not None else (0 if streamed else usize)
        local_extra = b""
        if member.zip64:
            local_extra = struct.pack("<HHQQ", 1, 16, local_usize, local_csize)
            if not streamed:
                local_csize = local_usize = 0xFFFFFFFF
        local_name = member.local_name if member.local_name is not None else member.name
        out += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            45 if member.zip64 else 20,
            member.flags,
            member.method,
            0,
            0x5821,
            local_crc,
            local_csize,
            local_usize,
            len(local_name),
            len(local_extra),
        )
        out += local_name + local_extra
        if layout is not None:
            layout.local_offsets.append(offset)
            layout.payload_spans.append((len(out), len(out) + len(payload)))
        out += payload
        if streamed:
            if layout is not None:
                layout.descriptor_offsets.append(len(out))
            d_crc, d_csize, d_usize = (
                member.descriptor if member.descriptor is not None else (crc, csize, usize)
            )
            if member.descriptor_signature:
                out += b"PK\x07\x08"
            out += struct.pack("<IQQ" if member.zip64 else "<III", d_crc, d_csize, d_usize)
        if member.omit_from_cd:
            continue
        cd_csize = member.cd_csize if member.cd_csize is not None else csize
        cd_usize = member.cd_usize if member.cd_usize is not None else usize
        cd_offset = member.cd_offset if member.cd_offset is not None else offset
        cd_extra = b""
        if member.zip64:
            cd_extra = struct.pack("<HHQQQ", 1, 24, cd_usize, cd_csize, cd_offset)
            cd_csize = cd_usize = cd_offset = 0xFFFFFFFF
        cd_name = member.cd_name if member.cd_name is not None else member.name
        record = (
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                member.made_by,
                45 if member.zip64 else 20,
                member.cd_flags if member.cd_flags is not None else member.flags,
                member.method,
                0,
                0x5821,
                member.cd_crc if member.cd_crc is not None else crc,
                cd_csize,
                cd_usize,
                len(cd_name),
                len(cd_extra),
                0,
                0,
                0,
                member.external_attr,
                cd_offset,
            )
            + cd_name
            + cd_extra
        )
        central.extend([record] * (1 + member.extra_cd_copies))
    central_offset = len(out)
    for record in central:
        out += record
    central_size = len(out) - central_offset
    count = len(central)
    if layout is not None:
        layout.central_offset = central_offset
    if zip64_end:
        zip64_offset = len(out)
        out += struct.pack(
            "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, central_size, central_offset
        )
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_offset, 1)
    if layout is not None:
        layout.eocd_offset = len(out)
    out += struct.pack(
        "<4sHHHHIIH",
        b"PK\x05\x06",
        0,
        0,
        eocd_count if eocd_count is not None else (0xFFFF if zip64_end else count),
        eocd_count if eocd_count is not None else (0xFFFF if zip64_end else count),
        eocd_cd_size if eocd_cd_size is not None else (0xFFFFFFFF if zip64_end else central_size),
        eocd_cd_offset if eocd_cd_offset is not None else (0xFFFFFFFF if zip64_end else central_offset),
        len(comment),
    )
    out += comment + trailing
    return bytes(out)


def raw_series_members(
    count: int = 3, *, size: int = 1500, seed: int = 0, license: bool = True, md5: bool = True
) -> tuple[list[RawMember], SeriesExpectation]:
    """An honest NBIA-shaped member list for :func:`build_raw_zip`, ready to be tampered with."""
    dicom = {name: make_dicom(size, seed * 1000 + index) for index, name in enumerate(dicom_names(count))}
    members: list[RawMember] = []
    if license:
        members.append(RawMember(b"LICENSE", LICENSE_TEXT))
    members.extend(RawMember(name.encode(), data) for name, data in dicom.items())
    if md5:
        members.append(RawMember(b"md5hashes.csv", md5_csv_for(dicom, seed=seed)))
    return members, SeriesExpectation(SERIES_UID, count, size * count)


def feed_in_chunks(target: object, body: bytes, chunk_size: int) -> None:
    """Feed ``body`` to ``target.feed`` in pieces of ``chunk_size`` bytes."""
    feed = target.feed  # type: ignore[attr-defined]
    for start in range(0, len(body), chunk_size):
        feed(body[start : start + chunk_size])


def tree(path: Path) -> dict[str, int]:
    """Every entry under ``path`` (relative name -> size, -1 for directories and links)."""
    result: dict[str, int] = {}
    for entry in sorted(path.rglob("*")):
        relative = entry.relative_to(path).as_posix()
        result[relative] = -1 if entry.is_dir() or entry.is_symlink() else entry.stat().st_size
    return result
