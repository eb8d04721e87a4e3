"""The streaming zip writer's output is readable by Python's zipfile, ZIP64 path included."""

from __future__ import annotations

import io
import zipfile
import zlib

import pytest

from tcia_fetch.testing._zipwriter import ZipStreamWriter


def _archive(members: dict[str, bytes], *, force_zip64: bool) -> bytes:
    writer = ZipStreamWriter(dos_date=(45 << 9) | (1 << 5) | 2, dos_time=12 << 11, force_zip64=force_zip64)
    out = bytearray()
    for name, data in members.items():
        out += writer.local_header(name)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        compressed = compressor.compress(data) + compressor.flush()
        out += compressed
        writer.add_data(len(compressed))
        out += writer.data_descriptor(zlib.crc32(data), len(compressed), len(data))
    out += writer.finish()
    assert writer.offset == len(out)
    return bytes(out)


@pytest.mark.parametrize("force_zip64", [False, True])
def test_archive_round_trips(force_zip64: bool) -> None:
    members = {"LICENSE": b"text", "00000001.dcm": b"x" * 5000, "dir/ü.txt": b""}
    archive = zipfile.ZipFile(io.BytesIO(_archive(members, force_zip64=force_zip64)))
    assert archive.namelist() == list(members)
    assert {name: archive.read(name) for name in members} == members
    assert archive.getinfo("LICENSE").date_time == (2025, 1, 2, 12, 0, 0)


def test_member_must_be_finished_before_the_next() -> None:
    writer = ZipStreamWriter(dos_date=0, dos_time=0)
    writer.local_header("a")
    with pytest.raises(RuntimeError):
        writer.local_header("b")
