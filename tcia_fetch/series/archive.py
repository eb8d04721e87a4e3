"""Per-series ``.tar.zst`` archives: written from the verified stream, checked by ``verify``.

``keep = "tar.zst"`` stores one zstandard-compressed tar per series: its DICOM files and its
``LICENSE`` under the server's names, then ``MD5SUMS`` (``<md5>  <name>`` lines, the format
``md5sum -c`` reads) for the DICOM files. A data lake then holds a few large objects instead
of thousands of small ones, and any standard tool can unpack one
(``tar --zstd -xf``; ``md5sum -c MD5SUMS``).

Bounded memory: a tar header needs the member's size before its data, and a zip member's size
is only certain once its data has been checked. The extractor therefore spools each member to
a file in the private staging directory (as ``keep = "dicom"`` does), and once that member is
verified :meth:`TarZstWriter.add_spooled` copies it into the tar in 1 MiB blocks and deletes the
spool. At most one member is ever spooled; the archive is written sequentially through a
zstandard stream writer; nothing is held in memory beyond a block and the compressor's window.

This module, ``store/journal.py`` and ``store/_parquet.py`` (the catalog's pages) are the only
users of zstandard.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final, cast

import zstandard

from tcia_fetch.errors import ArchiveCorruptError

__all__ = [
    "ARCHIVE_SUFFIX",
    "MD5SUMS_NAME",
    "ArchiveCheck",
    "TarZstWriter",
    "archive_name",
    "check_tar_zst",
    "md5sums_text",
]

ARCHIVE_SUFFIX: Final = ".tar.zst"
MD5SUMS_NAME: Final = "MD5SUMS"


def archive_name(series_uid: str, keep: str) -> str:
    """The one file a series is kept as with ``keep`` zip or tar.zst: ``<uid>.zip``,
    ``<uid>.tar.zst`` (what a worker writes and publishes, and what a Dask retry looks for)."""
    return f"{series_uid}{ARCHIVE_SUFFIX if keep == 'tar.zst' else '.zip'}"


_LEVEL: Final = 3
_BLOCK: Final = 1 << 20
#: A member of a stored archive is read in blocks of this size when re-hashed.
_MAX_MD5SUMS_BYTES: Final = 64 << 20


class _HashingFd(io.RawIOBase):
    """A write-only file over a raw descriptor that counts and MD5-hashes what passes through."""

    def __init__(self, fd: int, write: Callable[[int, memoryview], None]) -> None:
        super().__init__()
        self._fd = fd
        self._write_all = write
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        self.md5.update(view)
        self.size += view.nbytes
        self._write_all(self._fd, view)
        return view.nbytes


class TarZstWriter:
    """Appends verified members to one ``.tar.zst`` written to an open descriptor.

    ``write`` is the caller's write-everything function (it maps OS errors to storage errors);
    the descriptor stays the caller's to fsync and close. Call :meth:`finish` once, after the
    last member, to get the archive's size and MD5.
    """

    def __init__(self, fd: int, write: Callable[[int, memoryview], None]) -> None:
        self._sink = _HashingFd(fd, write)
        self._compressor = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True)
        self._zstd = self._compressor.stream_writer(cast(IO[bytes], self._sink), closefd=False)
        self._tar = tarfile.open(fileobj=self._zstd, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._mtime = int(time.time())
        self._finished = False

    def add_spooled(self, dir_fd: int, name: str, size: int) -> None:
        """Copy the spooled, verified file ``name`` (in ``dir_fd``) into the tar, then delete it."""
        info = self._info(name, size)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as spooled:
            self._tar.addfile(info, spooled)
        os.unlink(name, dir_fd=dir_fd)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def finish(self) -> tuple[int, str]:
        """Close the tar and the zstd frame; return (archive bytes, archive MD5 hex)."""
        if not self._finished:
            self._finished = True
            self._tar.close()
            self._zstd.flush(zstandard.FLUSH_FRAME)
        return self._sink.size, self._sink.md5.hexdigest()

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        info.mtime = self._mtime
        info.type = tarfile.REGTYPE
        return info


def md5sums_text(md5_by_name: dict[str, str]) -> bytes:
    """``MD5SUMS`` content: one ``<md5>  <name>`` line per DICOM file, in name order."""
    return "".join(f"{md5}  {name}\n" for name, md5 in sorted(md5_by_name.items())).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ArchiveCheck:
    """What re-reading a stored archive found: its MD5, size, DICOM count/bytes and problems."""

    md5: str
    size: int
    dicom_files: int
    dicom_bytes: int
    problems: tuple[str, ...]


class _HashingReader(io.RawIOBase):
    def __init__(self, blocks: Iterator[bytes]) -> None:
        super().__init__()
        self._blocks = blocks
        self._pending = b""
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        view = memoryview(buffer)  # type: ignore[arg-type]
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self.md5.update(block)
            self.size += len(block)
            self._pending = block
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def check_tar_zst(blocks: Iterator[bytes]) -> ArchiveCheck:
    """Re-read an archive given as a stream of raw blocks; re-hash every member.

    Checks that it decompresses and parses to the end, that every member is a regular file,
    and that every DICOM member's MD5 equals its ``MD5SUMS`` line (and that the list names
    exactly the DICOM members). The caller compares ``md5``/``size`` with the journal's record.
    """
    raw = _HashingReader(blocks)
    problems: list[str] = []
    computed: dict[str, str] = {}
    sizes: dict[str, int] = {}
    listed: dict[str, str] | None = None
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], raw), closefd=False)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    problems.append(f"member {member.name!r} is not a regular file")
                    continue
                source = tar.extractfile(member)
                if source is None:
                    problems.append(f"member {member.name!r} cannot be read")
                    continue
                if member.name == MD5SUMS_NAME:
                    listed = _parse_md5sums(source.read(_MAX_MD5SUMS_BYTES + 1))
                    continue
                digest = hashlib.md5(usedforsecurity=False)
                while block := source.read(_BLOCK):
                    digest.update(block)
                computed[member.name] = digest.hexdigest()
                sizes[member.name] = member.size
        while raw.read(_BLOCK):  # hash any trailing bytes too, so md5/size cover the whole object
            pass
    except (tarfile.TarError, zstandard.ZstdError, ArchiveCorruptError, EOFError) as exc:
        problems.append(f"the archive cannot be read to the end: {exc}")
    dicom = {name: md5 for name, md5 in computed.items() if name != "LICENSE"}
    if listed is None:
        problems.append(f"the archive holds no {MD5SUMS_NAME}")
    else:
        for name, md5 in sorted(dicom.items()):
            expected = listed.get(name)
            if expected is None:
                problems.append(f"{name} is not listed in {MD5SUMS_NAME}")
            elif expected != md5:
                problems.append(f"{name} has MD5 {md5}, {MD5SUMS_NAME} says {expected}")
        missing = sorted(set(listed) - set(dicom))
        if missing:
            problems.append(f"{len(missing)} file(s) listed in {MD5SUMS_NAME} are missing, e.g. {missing[0]}")
    return ArchiveCheck(
        md5=raw.md5.hexdigest(),
        size=raw.size,
        dicom_files=len(dicom),
        dicom_bytes=sum(size for name, size in sizes.items() if name in dicom),
        problems=tuple(problems),
    )


def _parse_md5sums(data: bytes) -> dict[str, str]:
    if len(data) > _MAX_MD5SUMS_BYTES:
        raise ArchiveCorruptError(f"{MD5SUMS_NAME} is larger than {_MAX_MD5SUMS_BYTES} bytes")
    result: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        md5, sep, name = line.partition("  ")
        if not sep or len(md5) != 32:
            raise ArchiveCorruptError(f"{MD5SUMS_NAME} line {number} is malformed")
        result[name] = md5.lower()
    return result


def file_blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """Blocks of an open binary file, for :func:`check_tar_zst`."""
    while block := stream.read(_BLOCK):
        yield block
