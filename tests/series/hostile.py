"""A corpus of hostile series archives, each named and paired with the error it must cause.

``generate(count, seed)`` yields :class:`HostileCase` objects round-robin over the families
below, each family varying its parameters deterministically with the case number, so any
count from a dozen to thousands gives a spread over every family. Nothing here is ever
acceptable: a test runs each case through a SeriesExtractor and expects zero accepted.

Families: unsafe names (``..``, absolute, backslash, drive, NUL, control, lookalike), symlink and
other non-regular members, duplicate and case-duplicate names, zip bombs (1000:1 members cut off
by TotalSizeInBytes, headers that understate sizes, overlapping entries, floods of tiny
entries), nested zips, encrypted members, unsupported methods, stored members without sizes,
truncation at many offsets, bit flips in data and CRC fields, junk after the end record, bodies
that are not zips at all (HTML, JSON, gzip, empty), and the integrity failures of a well-formed
archive (short zip, wrong sizes, MD5 mismatches).
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from tcia_fetch.errors import (
    ArchiveCorruptError,
    ArchiveTooLargeError,
    ChecksumMismatchError,
    CountMismatchError,
    IntegrityError,
    NotAnArchiveError,
    SizeMismatchError,
    UnsafeArchiveError,
)
from tcia_fetch.series.expectation import SeriesExpectation
from tests.series.archives import (
    SERIES_UID,
    RawLayout,
    RawMember,
    build_raw_zip,
    make_dicom,
    md5_csv_for,
    raw_series_members,
    zip_streamed,
)

__all__ = ["FAMILIES", "HostileCase", "generate"]

ErrorClasses = tuple[type[IntegrityError], ...]


@dataclass(frozen=True)
class HostileCase:
    """One hostile body, the expectation it is checked against, and the errors that are correct."""

    name: str
    family: str
    body: bytes
    expectation: SeriesExpectation
    errors: ErrorClasses
    bomb: bool = False


_Factory = Callable[[random.Random, int], tuple[str, bytes, SeriesExpectation, ErrorClasses]]


@functools.lru_cache(maxsize=4)
def _base(count: int = 3) -> tuple[tuple[RawMember, ...], SeriesExpectation, bytes, RawLayout]:
    members, expectation = raw_series_members(count, size=1500)
    layout = RawLayout()
    body = build_raw_zip(members, layout=layout)
    return tuple(members), expectation, body, layout


def _members() -> tuple[list[RawMember], SeriesExpectation]:
    members, expectation, _, _ = _base()
    return list(members), expectation


@functools.lru_cache(maxsize=8)
def _deflated_zeros(size: int) -> tuple[bytes, int, int]:
    """A DICOM head then ``size`` zero bytes, deflated (about 1000:1): payload, CRC-32, real size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = make_dicom(300, 7)
    parts = [compressor.compress(head)]
    crc = zlib.crc32(head)
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        parts.append(compressor.compress(block))
        crc = zlib.crc32(block, crc)
    parts.append(compressor.flush())
    return b"".join(parts), crc, len(head) + (size >> 20 << 20)


def _bomb_member(size: int, **overrides: object) -> tuple[RawMember, int]:
    payload, crc, real_size = _deflated_zeros(size)
    member = RawMember(b"00000001.dcm", b"", payload=payload, descriptor=(crc, len(payload), real_size))
    return replace(member, cd_crc=crc, cd_usize=real_size, **overrides), real_size  # type: ignore[arg-type]


_UNSAFE_NAMES = [
    b"../x",
    b"../../../../../../etc/passwd",
    b"/etc/passwd",
    b"/tmp/x.dcm",
    b"C:\\Windows\\x.dcm",
    b"c:x.dcm",
    b"..\\..\\x.dcm",
    b"a/../../x.dcm",
    b"\\\\host\\share\\x.dcm",
    b"sub/00000001.dcm",
    b"00000001.dcm\x00.txt",
    b"a\rb.dcm",
    b"x\x1b[31m.dcm",
    b"A" * 4096,
    b".",
    b"..",
    b"",
    b"./00000001.dcm",
    b"dir/",
    "\u202emcd.exe".encode(),
    "００000001.dcm".encode(),
    "0000000１.dcm".encode(),
    b"\xff\xfe.dcm",
    b"CON.dcm ",
    b" 00000001.dcm",
]


def _unsafe_name(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    members, expectation = _members()
    name = _UNSAFE_NAMES[number % len(_UNSAFE_NAMES)]
    position = 1 + rng.randrange(len(members) - 1)
    utf8 = 0x0800 if rng.random() < 0.5 else 0
    members[position] = replace(members[position], name=name, flags=members[position].flags | utf8)
    return (
        f"name {name[:24]!r} at #{position + 1}",
        build_raw_zip(members),
        expectation,
        (UnsafeArchiveError,),
    )


_NON_REGULAR_MODES = [0o120777, 0o120644, 0o010644, 0o020644, 0o060644, 0o140755, 0o040755]


def _non_regular(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    members, expectation = _members()
    mode = _NON_REGULAR_MODES[number % len(_NON_REGULAR_MODES)]
    position = rng.randrange(len(members))
    members[position] = replace(members[position], made_by=0x031E, external_attr=mode << 16)
    if number % 5 == 4:
        # "symlink, then write through it": a link named like a directory, then a file under it.
        members.insert(position + 1, replace(members[position], name=members[position].name + b"/x"))
    return (
        f"unix mode 0o{mode:o} at #{position + 1}",
        build_raw_zip(members),
        expectation,
        (UnsafeArchiveError,),
    )


def _duplicate(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    members, expectation = _members()
    target = 1 + rng.randrange(len(members) - 2)
    original = members[target].name
    variants = [original, original.upper(), original.swapcase(), b"license", b"MD5HASHES.CSV"]
    copy_name = variants[number % len(variants)]
    if copy_name in (b"license", b"MD5HASHES.CSV"):
        members.insert(target + 1, replace(members[target], name=copy_name))
    else:
        members.insert(target + 1, replace(members[target], name=copy_name, data=make_dicom(1500, 99)))
    errors: ErrorClasses = (UnsafeArchiveError,)
    if copy_name == b"MD5HASHES.CSV":
        # An extra DICOM member before the real md5hashes.csv: its bytes pass TotalSizeInBytes
        # before the case clash can be seen. Refused either way.
        errors = (UnsafeArchiveError, ArchiveTooLargeError)
    return f"duplicate {copy_name!r} of {original!r}", build_raw_zip(members), expectation, errors


def _bomb_ratio(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    size = (16, 64, 128)[number % 3] << 20
    member, real_size = _bomb_member(size)
    assert member.payload is not None
    promised = rng.choice([3 * 1500, 1 << 20, 8 << 20])
    members = [member]
    expectation = SeriesExpectation(SERIES_UID, 3, promised)
    return (
        f"{size >> 20} MiB of zeros ({real_size // len(member.payload)}:1) vs {promised} promised bytes",
        build_raw_zip(members),
        expectation,
        (ArchiveTooLargeError,),
    )


def _bomb_lying_header(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    size = (16, 64)[number % 2] << 20
    payload, crc, _ = _deflated_zeros(size)
    claimed = rng.choice([1000, 1500, 4096])
    members = [
        RawMember(
            b"00000001.dcm",
            b"",
            payload=payload,
            flags=0,
            local_crc=crc,
            local_csize=len(payload),
            local_usize=claimed,
        )
    ]
    expectation = SeriesExpectation(SERIES_UID, 1, rng.choice([claimed, 32 << 20]))
    return (
        f"header claims {claimed} bytes, deflates to {size >> 20} MiB",
        build_raw_zip(members),
        expectation,
        (ArchiveCorruptError, ArchiveTooLargeError),
    )


def _bomb_overlap(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    size = (4, 16)[number % 2] << 20
    kernel, real_size = _bomb_member(size)
    layout = RawLayout()
    body = bytearray(build_raw_zip([kernel], layout=layout))
    # Fifield-style: many central directory entries reusing the one kernel.
    copies = 20 + rng.randrange(200)
    central = bytes(body[layout.central_offset : layout.eocd_offset])
    body[layout.central_offset :] = central * copies + struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, copies, copies, len(central) * copies, layout.central_offset, 0
    )
    expectation = SeriesExpectation(SERIES_UID, copies, copies * real_size)
    return (
        f"{copies} entries overlapping one {size >> 20} MiB kernel",
        bytes(body),
        expectation,
        (
            ArchiveCorruptError,
            ArchiveTooLargeError,
        ),
    )


def _bomb_flood(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    count = 500 + rng.randrange(1500)
    tiny = make_dicom(300, 1)
    members = [RawMember(f"{index:08d}.dcm".encode(), tiny) for index in range(1, count + 1)]
    expectation = SeriesExpectation(SERIES_UID, 3, count * len(tiny))
    return (
        f"{count} tiny entries for 3 promised",
        build_raw_zip(members),
        expectation,
        (ArchiveTooLargeError,),
    )


def _nested_zip(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    members, _ = _members()
    inner_members, _ = _members()
    inner = (
        build_raw_zip(inner_members) if number % 2 else zip_streamed([("00000001.dcm", make_dicom(1500, 1))])
    )
    position = 1 + rng.randrange(3)
    members[position] = replace(members[position], data=inner)
    dicom = {m.name.decode(): m.data for m in members[1:4]}
    members[4] = replace(members[4], data=md5_csv_for(dicom))
    expectation = SeriesExpectation(SERIES_UID, 3, sum(map(len, dicom.values())))
    return f"zip inside #{position + 1}", build_raw_zip(members), expectation, (ArchiveCorruptError,)


#: (flags, method): traditional and strong encryption, masked headers; shrink, implode, deflate64,
#: bzip2, LZMA, zstd, xz, PPMd, AES; and stored with sizes after the data.
_BAD_METHODS = [
    (0x0001, 8), (0x0009, 8), (0x0041, 8), (0x2008, 8), (0x0008, 1), (0x0008, 6), (0x0008, 9),
    (0x0008, 12), (0x0008, 14), (0x0008, 93), (0x0008, 95), (0x0008, 98), (0x0008, 99), (0x0008, 0),
]  # fmt: skip


def _method(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    members, expectation = _members()
    flags, method = _BAD_METHODS[number % len(_BAD_METHODS)]
    position = rng.randrange(len(members))
    members[position] = replace(members[position], flags=flags, method=method)
    label = f"flags 0x{flags:04x} method {method} at #{position + 1}"
    return label, build_raw_zip(members), expectation, (UnsafeArchiveError,)


def _truncation(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    _, expectation, body, layout = _base()
    landmarks = [
        len(body) - 1,
        1,
        3,
        4,
        29,
        layout.local_offsets[1] + 10,
        layout.payload_spans[2][0] + 5,
        layout.descriptor_offsets[1] + 7,
        layout.central_offset + 20,
        layout.eocd_offset,
        layout.eocd_offset + 21,
    ]
    cut = landmarks[number] if number < len(landmarks) else rng.randrange(1, len(body))
    return f"cut at {cut} of {len(body)}", body[:cut], expectation, (ArchiveCorruptError,)


def _bit_flip(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    _, expectation, body, layout = _base()
    kind = number % 3
    if kind == 0:
        start, end = layout.payload_spans[rng.randrange(len(layout.payload_spans))]
        position = rng.randrange(start, end - 1)  # the last byte may hold ignored padding bits
        what = "data"
    elif kind == 1:
        position = (
            layout.descriptor_offsets[rng.randrange(len(layout.descriptor_offsets))] + 4 + rng.randrange(4)
        )
        what = "descriptor CRC"
    else:
        entry = rng.randrange(len(layout.local_offsets))
        central = layout.central_offset + _central_entry_offset(body, layout.central_offset, entry)
        position = central + 16 + rng.randrange(4)
        what = "central CRC"
    flipped = bytearray(body)
    bit = rng.randrange(8)
    flipped[position] ^= 1 << bit
    errors: ErrorClasses = (ArchiveCorruptError, ArchiveTooLargeError)
    return f"{what} bit {bit} of byte {position}", bytes(flipped), expectation, errors


def _central_entry_offset(body: bytes, central_offset: int, entry: int) -> int:
    position = central_offset
    for _ in range(entry):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", body, position + 28)
        position += 46 + name_len + extra_len + comment_len
    return position - central_offset


def _junk_after_end(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    _, expectation, body, _ = _base()
    junk = [b"\x00", b"\n", b"PK\x05\x06" + bytes(18), body, rng.randbytes(1 + rng.randrange(500)), b"<html>"]
    tail = junk[number % len(junk)]
    return f"{len(tail)} bytes after the end record", body + tail, expectation, (ArchiveCorruptError,)


_NOT_ZIPS = [
    b"",
    b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head></html>",
    b"<html><body>Scheduled maintenance</body></html>",
    b'{"error":"Internal Server Error","status":500}',
    b"[]",
    b"Server was not able to process your request\nnull",
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
    b"PK\x05\x05",
    b"\x00" * 64,
    b"   PK\x03\x04",
]


def _not_a_zip(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    _, expectation, _, _ = _base()
    if number < len(_NOT_ZIPS):
        body = _NOT_ZIPS[number]
    else:
        body = rng.choice([b"Q", b"<", b"{", b"\xff"]) + rng.randbytes(rng.randrange(2000))
    return f"body {body[:16]!r}", body, expectation, (NotAnArchiveError,)


def _integrity(rng: random.Random, number: int) -> tuple[str, bytes, SeriesExpectation, ErrorClasses]:
    members, expectation = _members()
    kind = number % 6
    if kind == 0:
        return (
            "short zip (one instance dropped)",
            build_raw_zip(members[:2] + members[3:]),
            expectation,
            (
                CountMismatchError,
                ChecksumMismatchError,
            ),
        )
    if kind == 1:
        return "LICENSE only", build_raw_zip(members[:1]), expectation, (CountMismatchError,)
    if kind == 2:
        bigger = replace(expectation, total_bytes=expectation.total_bytes + 1 + rng.randrange(100))
        return "fewer DICOM bytes than promised", build_raw_zip(members), bigger, (SizeMismatchError,)
    if kind == 3:
        smaller = replace(expectation, total_bytes=expectation.total_bytes - 1 - rng.randrange(100))
        return "more DICOM bytes than promised", build_raw_zip(members), smaller, (ArchiveTooLargeError,)
    if kind == 4:
        position = 1 + rng.randrange(3)
        corrupted = bytearray(members[position].data)
        corrupted[200 + rng.randrange(1000)] ^= 0x40
        members[position] = replace(members[position], data=bytes(corrupted))
        return (
            f"MD5 mismatch in #{position + 1}",
            build_raw_zip(members),
            expectation,
            (ChecksumMismatchError,),
        )
    return (
        "stored member with sizes after the data",
        build_raw_zip([replace(member, method=0) for member in members]),
        expectation,
        (UnsafeArchiveError,),
    )


FAMILIES: dict[str, tuple[_Factory, bool]] = {
    "unsafe-name": (_unsafe_name, False),
    "non-regular": (_non_regular, False),
    "duplicate": (_duplicate, False),
    "bomb-ratio": (_bomb_ratio, True),
    "bomb-lying-header": (_bomb_lying_header, True),
    "bomb-overlap": (_bomb_overlap, True),
    "bomb-flood": (_bomb_flood, True),
    "nested-zip": (_nested_zip, False),
    "method": (_method, False),
    "truncation": (_truncation, False),
    "bit-flip": (_bit_flip, False),
    "junk-after-end": (_junk_after_end, False),
    "not-a-zip": (_not_a_zip, False),
    "integrity": (_integrity, False),
}

#: Families whose cases are cheap; they fill the corpus in proportion. Bombs cost more time
#: each, so they take every third round only.
_HEAVY = frozenset({"bomb-ratio", "bomb-lying-header", "bomb-overlap", "bomb-flood"})


def generate(count: int, *, seed: int = 0) -> Iterator[HostileCase]:
    """Yield ``count`` hostile cases, deterministic for a given ``seed``."""
    produced = 0
    round_number = 0
    per_family: dict[str, int] = dict.fromkeys(FAMILIES, 0)
    while produced < count:
        for family, (factory, bomb) in FAMILIES.items():
            if produced >= count:
                return
            if family in _HEAVY and round_number % 3:
                continue
            number = per_family[family]
            per_family[family] += 1
            rng = random.Random(f"{seed}:{family}:{number}")
            label, body, expectation, errors = factory(rng, number)
            yield HostileCase(f"{family}-{number:03d}: {label}", family, body, expectation, errors, bomb)
            produced += 1
        round_number += 1
