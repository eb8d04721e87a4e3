"""The streaming zip reader on its own: formats it must read, and every way an archive can be broken."""

from __future__ import annotations

import io
import itertools
import struct
import zipfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcia_fetch.errors import ArchiveCorruptError, NotAnArchiveError, UnsafeArchiveError
from tcia_fetch.series.zipstream import INFLATE_OUTPUT_STEP, MemberHeader, StreamedMember, ZipStreamReader
from tests.series.archives import (
    RawLayout,
    RawMember,
    build_raw_zip,
    build_series,
    compress_raw,
    feed_in_chunks,
    zip_streamed,
)


class Recorder:
    """A ZipSink that keeps every member's bytes and the largest chunk it was handed."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.contents: dict[str, bytes] = {}
        self.largest_chunk = 0
        self._current = bytearray()

    def member_started(self, header: MemberHeader) -> None:
        self.events.append(("start", header.index, header.name, header.header_offset))
        self._current = bytearray()

    def member_data(self, data: bytes | memoryview) -> None:
        self.largest_chunk = max(self.largest_chunk, len(data))
        self._current += data

    def member_ended(self, member: StreamedMember) -> None:
        self.events.append(("end", member.index, member.name, member.crc32, member.uncompressed_size))
        self.contents[member.name] = bytes(self._current)


def read_all(body: bytes, chunk_size: int) -> tuple[Recorder, object]:
    recorder = Recorder()
    reader = ZipStreamReader(recorder)
    feed_in_chunks(reader, body, chunk_size)
    return recorder, reader.finish()


def expected_contents(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 29, 64, 333, 4096, 1 << 20])
def test_streamed_archive_reads_identically_at_any_chunk_size(chunk_size: int) -> None:
    archive = build_series(4)
    whole, whole_index = read_all(archive.body, len(archive.body))
    chunked, chunked_index = read_all(archive.body, chunk_size)
    assert chunked.events == whole.events
    assert chunked.contents == whole.contents == expected_contents(archive.body)
    assert chunked_index == whole_index


def test_members_and_index_match_what_zipfile_reads() -> None:
    archive = build_series(3, new_file_names=True)
    recorder, index = read_all(archive.body, 100)
    assert list(recorder.contents) == ["LICENSE", "1-1.dcm", "1-2.dcm", "1-3.dcm", "md5hashes.csv"]
    with zipfile.ZipFile(io.BytesIO(archive.body)) as reference:
        infos = reference.infolist()
    assert [(entry.name, entry.crc32, entry.header_offset) for entry in index.entries] == [  # type: ignore[attr-defined]
        (info.filename, info.CRC, info.header_offset) for info in infos
    ]
    assert index.archive_bytes == len(archive.body)  # type: ignore[attr-defined]


def test_sized_members_from_a_seekable_writer_are_read() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("stored.bin", b"s" * 3000, compress_type=zipfile.ZIP_STORED)
        archive.writestr("deflated.bin", b"d" * 3000, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("empty.bin", b"", compress_type=zipfile.ZIP_STORED)
    recorder, _ = read_all(buffer.getvalue(), 5)
    assert recorder.contents == {"stored.bin": b"s" * 3000, "deflated.bin": b"d" * 3000, "empty.bin": b""}


def test_zip64_extra_fields_descriptors_and_end_records_are_read() -> None:
    body = zip_streamed([("a.bin", b"a" * 5000), ("b.bin", b"b" * 10)], force_zip64=True)
    recorder, _ = read_all(body, 11)
    assert recorder.contents == {"a.bin": b"a" * 5000, "b.bin": b"b" * 10}
    members = [RawMember(b"x.bin", b"x" * 4000, zip64=True), RawMember(b"y.bin", b"y" * 9, zip64=True)]
    raw = build_raw_zip(members, zip64_end=True)
    recorder, index = read_all(raw, 13)
    assert recorder.contents == {"x.bin": b"x" * 4000, "y.bin": b"y" * 9}
    assert index.zip64  # type: ignore[attr-defined]


def test_descriptor_without_signature_is_read() -> None:
    members = [RawMember(b"a.bin", b"hello" * 300, descriptor_signature=False), RawMember(b"b.bin", b"x")]
    recorder, _ = read_all(build_raw_zip(members), 1)
    assert recorder.contents == {"a.bin": b"hello" * 300, "b.bin": b"x"}


def test_archive_comment_is_allowed_but_nothing_after_it() -> None:
    members = [RawMember(b"a.bin", b"abc")]
    read_all(build_raw_zip(members, comment=b"made by hand"), 4)
    with pytest.raises(ArchiveCorruptError, match="follow the end of the archive"):
        read_all(build_raw_zip(members, comment=b"made by hand", trailing=b"\x00"), 4)


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b"<!DOCTYPE html><html><body>Service Unavailable</body></html>", "<!DOCTYPE html>"),
        (b'{"error": "maintenance"}', '{"error"'),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "gzip"),
        (b"Server was not able to process your request\nnull", "Server was not"),
    ],
)
def test_a_body_that_is_not_a_zip_is_refused_on_the_first_feed(body: bytes, shown: str) -> None:
    reader = ZipStreamReader(Recorder())
    with pytest.raises(NotAnArchiveError, match="not a zip archive") as caught:
        reader.feed(body)
    assert shown in str(caught.value)
    with pytest.raises(NotAnArchiveError):
        reader.finish()


def test_an_empty_body_is_not_an_archive() -> None:
    with pytest.raises(NotAnArchiveError, match="empty"):
        ZipStreamReader(Recorder()).finish()


def test_truncation_at_every_offset_is_corruption() -> None:
    body = build_series(2, sizes=[300, 400]).body
    for length in range(1, len(body)):
        reader = ZipStreamReader(Recorder())
        reader.feed(body[:length])
        with pytest.raises(ArchiveCorruptError, match="truncated"):
            reader.finish()


def test_stored_member_with_sizes_after_the_data_is_refused() -> None:
    body = zip_streamed([("a.bin", b"abc")], compression=zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="cannot be found while streaming"):
        read_all(body, 1 << 16)


@pytest.mark.parametrize(
    ("flags", "method"), [(0x0009, 8), (0x0048, 8), (0x0008, 12), (0x0008, 14), (0x0008, 99)]
)
def test_encrypted_members_and_unknown_methods_are_refused(flags: int, method: int) -> None:
    body = build_raw_zip([RawMember(b"a.bin", b"abc" * 10, flags=flags, method=method)])
    with pytest.raises(UnsafeArchiveError, match=r"a\.bin"):
        read_all(body, 7)


def test_inflating_a_bomb_hands_out_bounded_chunks() -> None:
    data = bytes(max(8 * INFLATE_OUTPUT_STEP, 8 << 20))
    body = build_raw_zip([RawMember(b"zeros.bin", data)])
    assert len(body) * 1000 < len(data)
    recorder = Recorder()
    reader = ZipStreamReader(recorder)
    reader.feed(body)
    reader.finish()
    assert recorder.largest_chunk <= INFLATE_OUTPUT_STEP
    assert len(recorder.contents["zeros.bin"]) == len(data)


def test_header_that_understates_the_size_is_stopped_at_the_claim() -> None:
    data = bytes(4 * INFLATE_OUTPUT_STEP)
    member = RawMember(b"bomb.bin", data, flags=0, local_usize=1000)
    recorder = Recorder()
    reader = ZipStreamReader(recorder)
    with pytest.raises(ArchiveCorruptError, match="inflates past the 1000 bytes"):
        reader.feed(build_raw_zip([member]))
    assert recorder.largest_chunk <= INFLATE_OUTPUT_STEP


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (RawMember(b"a.bin", b"abc" * 99, descriptor=(0, 0, 0)), "data descriptor says"),
        (RawMember(b"a.bin", b"abc" * 99, flags=0, local_crc=1), "header says CRC-32 00000001"),
        (RawMember(b"a.bin", b"abc" * 99, flags=0, local_csize=5), "does not end within the 5"),
        (
            RawMember(b"a.bin", b"abc" * 99, method=0, flags=0, local_csize=10, local_usize=11),
            "is stored but",
        ),
        (RawMember(b"a.bin", b"abc" * 99, payload=b"\xff" * 40), "invalid deflate data"),
        (RawMember(b"a.bin", b"abc" * 99, cd_name=b"b.bin"), "name"),
        (RawMember(b"a.bin", b"abc" * 99, cd_crc=7), "CRC-32"),
        (RawMember(b"a.bin", b"abc" * 99, cd_usize=7), "uncompressed size"),
        (RawMember(b"a.bin", b"abc" * 99, cd_offset=7), "local header offset"),
        (RawMember(b"a.bin", b"abc" * 99, cd_flags=0), "flags"),
        (RawMember(b"a.bin", b"abc" * 99, extra_cd_copies=1), "more than the 1 members"),
        (RawMember(b"a.bin", b"abc" * 99, omit_from_cd=True), "streamed 1 members but"),
    ],
)
def test_lies_in_headers_descriptors_and_central_directory_are_caught(
    member: RawMember, message: str
) -> None:
    with pytest.raises(ArchiveCorruptError, match=message):
        read_all(build_raw_zip([member]), 5)


@pytest.mark.parametrize(
    "overrides",
    [{"eocd_count": 2}, {"eocd_cd_size": 1}, {"eocd_cd_offset": 0}],
)
def test_end_record_figures_must_match_the_directory(overrides: dict[str, int]) -> None:
    body = build_raw_zip([RawMember(b"a.bin", b"abc")], **overrides)  # type: ignore[arg-type]
    with pytest.raises(ArchiveCorruptError, match="end of central directory record disagrees"):
        read_all(body, 3)


def test_overlapping_entries_are_caught_by_offsets() -> None:
    kernel = bytes(100_000)
    members = [RawMember(b"a.bin", kernel), RawMember(b"b.bin", kernel, cd_offset=0)]
    with pytest.raises(ArchiveCorruptError, match="local header offset 0 vs streamed"):
        read_all(build_raw_zip(members), 1 << 12)


def test_zip64_end_records_must_be_consistent() -> None:
    layout = RawLayout()
    body = bytearray(build_raw_zip([RawMember(b"a.bin", b"abc")], zip64_end=True, layout=layout))
    locator = layout.eocd_offset - 20
    struct.pack_into("<Q", body, locator + 8, 3)  # locator points elsewhere
    with pytest.raises(ArchiveCorruptError, match="locator"):
        read_all(bytes(body), 9)


def test_reader_is_poisoned_after_an_error() -> None:
    reader = ZipStreamReader(Recorder())
    with pytest.raises(NotAnArchiveError):
        reader.feed(b"nope")
    with pytest.raises(NotAnArchiveError):
        reader.feed(b"PK\x03\x04")


def test_bit_flips_in_compressed_data_never_pass() -> None:
    data = b"".join(struct.pack("<H", (index * 37) % 4096) for index in range(3000))
    layout = RawLayout()
    body = build_raw_zip([RawMember(b"a.bin", data)], layout=layout)
    start, end = layout.payload_spans[0]
    assert compress_raw(data) == body[start:end]
    for position in range(start, end - 1, 3):
        flipped = bytearray(body)
        flipped[position] ^= 1 << (position % 8)
        with pytest.raises(ArchiveCorruptError):
            read_all(bytes(flipped), 1 << 16)
    assert zlib.crc32(data)  # the honest archive reads (sanity of the campaign itself)
    read_all(body, 1 << 16)


_PROPERTY_ARCHIVE = build_series(3, sizes=[700, 900, 1100], new_file_names=True).body


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_PROPERTY_ARCHIVE)), max_size=40))
def test_any_split_of_the_body_reads_the_same(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(_PROPERTY_ARCHIVE)]
    recorder = Recorder()
    reader = ZipStreamReader(recorder)
    for start, end in itertools.pairwise(points):
        reader.feed(_PROPERTY_ARCHIVE[start:end])
    index = reader.finish()
    whole, whole_index = read_all(_PROPERTY_ARCHIVE, len(_PROPERTY_ARCHIVE))
    assert recorder.events == whole.events and recorder.contents == whole.contents
    assert index == whole_index
