"""Read a zip archive as its bytes arrive, without ever seeking, and prove it whole at the end.

NBIA builds each series zip on the fly with Java's ``ZipOutputStream``: DEFLATE members whose
sizes and CRC follow the data in a data descriptor (flag bit 3), no Content-Length, no Range.
:class:`ZipStreamReader` takes the body in chunks of any size (one byte at a time works) and
hands each member's decompressed bytes to a :class:`ZipSink` as they come, so a series can be
verified and written in the same pass as the download.

What a caller may rely on:

* A body that does not start like a zip (HTML, JSON, gzip, nothing) raises
  :class:`~tcia_fetch.errors.NotAnArchiveError` from the first ``feed`` that shows it, quoting
  the first bytes.
* Every member's CRC-32 and both sizes are checked against its local header or data descriptor
  before ``member_ended``; the end of a bit-3 member is where its deflate stream ends, never a
  signature search.
* Inflating is bounded: at most ``INFLATE_OUTPUT_STEP`` bytes are produced before the sink sees
  them, so a sink that enforces caps stops a bomb after one step.
* The central directory and end records (zip64 included) are cross-checked against what
  streamed: same names in the same order, CRCs, sizes, local header offsets, entry counts, sizes
  and offsets of the directory itself. Nothing may follow the end record but its comment.
* ``finish()`` returns an :class:`ArchiveIndex` only for a complete archive; any truncation,
  even one byte, raises :class:`~tcia_fetch.errors.ArchiveCorruptError`.
* Once an error is raised the reader is poisoned: later calls raise the same error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from functools import partial
from typing import Protocol

from tcia_fetch.errors import (
    ArchiveCorruptError,
    NotAnArchiveError,
    UnsafeArchiveError,
)
from tcia_fetch.series.inflate import InflateError, Inflater, crc32, new_raw_inflater
from tcia_fetch.series.zipformat import (
    CENTRAL_HEADER,
    CENTRAL_SIG,
    DESCRIPTOR32,
    DESCRIPTOR64,
    DESCRIPTOR_SIG,
    EOCD,
    EOCD_SIG,
    FLAG_DATA_DESCRIPTOR,
    FLAG_ENCRYPTED,
    FLAG_MASKED_HEADERS,
    FLAG_STRONG_ENCRYPTION,
    LOCAL_HEADER,
    LOCAL_SIG,
    MAGIC16,
    MAGIC32,
    METHOD_DEFLATED,
    METHOD_STORED,
    ZIP64_EOCD_BODY,
    ZIP64_EOCD_SIG,
    ZIP64_LOCATOR,
    ZIP64_LOCATOR_SIG,
    CentralEntry,
    decode_name,
    file_type_from_attributes,
    parse_zip64_extra,
)

__all__ = [
    "INFLATE_INPUT_SLICE",
    "INFLATE_OUTPUT_STEP",
    "ArchiveIndex",
    "MemberHeader",
    "StreamedMember",
    "ZipSink",
    "ZipStreamReader",
    "describe_body_start",
]

#: Most decompressed bytes produced before the sink sees them (and can enforce its caps). Small
#: enough that many extractor threads at once hold little: each output is hashed, written, freed.
INFLATE_OUTPUT_STEP = 256 << 10
#: Most compressed bytes handed to zlib at once; bounds the copy zlib makes of unread input.
INFLATE_INPUT_SLICE = 256 << 10
#: A zip64 end record is 56 bytes plus an "extensible data sector" nobody uses; cap it.
MAX_ZIP64_EOCD_BYTES = 1 << 16
_EXCERPT_BYTES = 96


class ZipSink(Protocol):
    """Receives the members of an archive in order. Any exception it raises stops the reader."""

    def member_started(self, header: MemberHeader) -> None:
        """A local header was read; no data of this member has been passed yet."""

    def member_data(self, data: bytes | memoryview) -> None:
        """The next decompressed bytes of the current member (valid only during the call)."""

    def member_ended(self, member: StreamedMember) -> None:
        """The current member is complete and its CRC-32 and sizes check out."""


@dataclass(frozen=True, slots=True)
class MemberHeader:
    """A member's local header as streamed: ``index`` counts from 0 in archive order."""

    index: int
    name: str
    flags: int
    method: int
    header_offset: int


@dataclass(frozen=True, slots=True)
class StreamedMember:
    """A member as it actually streamed: CRC-32 and sizes computed, not claimed."""

    index: int
    name: str
    crc32: int
    compressed_size: int
    uncompressed_size: int
    header_offset: int


@dataclass(frozen=True, slots=True)
class ArchiveIndex:
    """A complete, self-consistent archive: its members and the central directory that agreed."""

    members: tuple[StreamedMember, ...]
    entries: tuple[CentralEntry, ...]
    comment: bytes
    archive_bytes: int
    zip64: bool


class _Phase(Enum):
    MEMBERS = auto()
    CENTRAL = auto()
    AFTER_ZIP64_EOCD = auto()
    AFTER_LOCATOR = auto()
    DONE = auto()


class _Mode(Enum):
    RECORD = auto()
    STORED = auto()
    INFLATE = auto()
    DONE = auto()


@dataclass(slots=True)
class _Member:
    """Bookkeeping for the member being streamed."""

    header: MemberHeader
    raw_name: bytes
    streamed_sizes: bool
    zip64_extra: bool
    declared_crc: int
    declared_compressed: int
    declared_uncompressed: int
    crc: int = 0
    compressed_seen: int = 0
    uncompressed_seen: int = 0

    @property
    def where(self) -> str:
        return (
            f"member {self.header.name!r} (#{self.header.index + 1}, local header at offset "
            f"{self.header.header_offset})"
        )


_RecordHandler = Callable[[bytes, int], None]


def describe_body_start(data: bytes) -> str:
    """The first bytes of a body, printable and truncated, for a "not a zip" message."""
    excerpt = data[:_EXCERPT_BYTES]
    text = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in excerpt)
    more = "..." if len(data) > _EXCERPT_BYTES else ""
    hint = ""
    if data.startswith(b"\x1f\x8b"):
        hint = " (a gzip stream: was a Content-Encoding left undecoded?)"
    elif data.lstrip()[:1] in (b"<", b"{", b"["):
        hint = " (an HTML/XML or JSON page)"
    return f"starts with {text!r}{more}{hint}"


class ZipStreamReader:
    """Incremental zip parser; see the module docstring for its guarantees."""

    def __init__(self, sink: ZipSink) -> None:
        self._sink = sink
        self._offset = 0
        self._phase = _Phase.MEMBERS
        self._mode = _Mode.RECORD
        self._record = bytearray()
        self._record_start = 0
        self._need = 0
        self._handler: _RecordHandler = self._on_signature
        self._what = ""
        self._members: list[StreamedMember] = []
        self._member_raw: list[tuple[bytes, int, int]] = []  # raw name, flags, method
        self._entries: list[CentralEntry] = []
        self._current: _Member | None = None
        self._inflater: Inflater | None = None
        self._central_start: int | None = None
        self._central_end: int | None = None
        self._zip64_eocd_offset: int | None = None
        self._comment = b""
        self._failure: Exception | None = None
        self._index: ArchiveIndex | None = None
        self._expect(4, self._on_signature, "the first local file header")

    @property
    def bytes_seen(self) -> int:
        """Raw archive bytes consumed so far."""
        return self._offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the body; chunk boundaries may fall anywhere."""
        if self._failure is not None:
            raise self._failure
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not view:
            return
        try:
            if self._offset < len(LOCAL_SIG):
                self._sniff(view)
            while view:
                if self._mode is _Mode.RECORD:
                    used = self._take_record(view)
                elif self._mode is _Mode.INFLATE:
                    used = self._inflate(view)
                elif self._mode is _Mode.STORED:
                    used = self._pass_stored(view)
                else:
                    raise ArchiveCorruptError(
                        f"{len(view)} bytes follow the end of the archive at offset {self._offset}; only "
                        f"the {len(self._comment)}-byte comment the end record declares may be there"
                    )
                view = view[used:]
        except Exception as exc:
            # Whatever stopped the stream (ours, the sink's, a disk error) leaves the parser
            # mid-record: refuse to go on rather than parse from a wrong position.
            self._failure = exc
            raise

    def finish(self) -> ArchiveIndex:
        """Declare the body complete; return the index, or raise if the archive is not whole."""
        if self._failure is not None:
            raise self._failure
        if self._index is not None:
            return self._index
        if self._offset == 0:
            self._failure = NotAnArchiveError("empty response body where a zip archive was due")
        else:
            self._failure = ArchiveCorruptError(
                f"archive truncated: the body ends after {self._offset} bytes, in the middle of "
                f"{self._describe_position()}"
            )
        raise self._failure

    # --- plumbing ------------------------------------------------------------------------------

    def _sniff(self, view: memoryview) -> None:
        seen = self._record[: self._offset] if self._mode is _Mode.RECORD else b""
        head = bytes(seen) + bytes(view[: _EXCERPT_BYTES + 1])
        probe = head[: len(LOCAL_SIG)]
        if not (LOCAL_SIG.startswith(probe) or EOCD_SIG.startswith(probe)):
            raise NotAnArchiveError(f"the response body is not a zip archive: it {describe_body_start(head)}")

    def _expect(self, size: int, handler: _RecordHandler, what: str) -> None:
        """Collect the next ``size`` bytes as one record and pass them to ``handler``."""
        self._mode = _Mode.RECORD
        self._need = size
        self._handler = handler
        self._what = what
        self._record_start = self._offset
        if size == 0:
            handler(b"", self._offset)

    def _take_record(self, view: memoryview) -> int:
        missing = self._need - len(self._record)
        if not self._record and len(view) >= missing:
            record = bytes(view[:missing])
        else:
            self._record += view[:missing]
            if len(self._record) < self._need:
                self._offset += len(view)
                return len(view)
            record = bytes(self._record)
            self._record.clear()
        self._offset += missing
        self._handler(record, self._record_start)
        return missing

    def _describe_position(self) -> str:
        member = self._current
        if self._mode is _Mode.RECORD:
            got = len(self._record)
            return (
                f"{self._what} ({got} of {self._need} bytes present, starting at offset {self._record_start})"
            )
        assert member is not None
        declared = "" if member.streamed_sizes else f" of {member.declared_compressed} declared"
        return f"the data of {member.where} ({member.compressed_seen} compressed bytes read{declared})"

    # --- record signatures -----------------------------------------------------------------------

    def _next_signature(self) -> None:
        self._expect(4, self._on_signature, "the next record signature")

    def _on_signature(self, signature: bytes, start: int) -> None:
        phase = self._phase
        if signature == LOCAL_SIG and phase is _Phase.MEMBERS:
            self._expect(LOCAL_HEADER.size - 4, self._on_local_fixed, "a local file header")
        elif signature == CENTRAL_SIG and phase in (_Phase.MEMBERS, _Phase.CENTRAL):
            if self._central_start is None:
                self._central_start = start
            self._phase = _Phase.CENTRAL
            self._expect(CENTRAL_HEADER.size - 4, self._on_central_fixed, "a central directory entry")
        elif signature == ZIP64_EOCD_SIG and phase in (_Phase.MEMBERS, _Phase.CENTRAL):
            self._close_central_directory(start)
            self._zip64_eocd_offset = start
            self._expect(8, self._on_zip64_eocd_size, "the zip64 end of central directory record")
        elif signature == ZIP64_LOCATOR_SIG and phase is _Phase.AFTER_ZIP64_EOCD:
            self._expect(ZIP64_LOCATOR.size - 4, self._on_zip64_locator, "the zip64 end locator")
        elif signature == EOCD_SIG and phase in (_Phase.MEMBERS, _Phase.CENTRAL, _Phase.AFTER_LOCATOR):
            self._close_central_directory(start)
            self._expect(EOCD.size - 4, self._on_eocd, "the end of central directory record")
        elif phase is _Phase.AFTER_ZIP64_EOCD:
            raise ArchiveCorruptError(
                f"the zip64 end record is not followed by its locator at offset {start} (found {signature!r})"
            )
        else:
            raise ArchiveCorruptError(
                f"unexpected bytes {signature!r} at offset {start} where a zip record signature was due "
                f"(after {len(self._members)} members, {len(self._entries)} central directory entries)"
            )

    # --- members ---------------------------------------------------------------------------------

    def _on_local_fixed(self, rest: bytes, start: int) -> None:
        fields = LOCAL_HEADER.unpack(LOCAL_SIG + rest)
        _sig, _version, flags, method, _time, _date, crc, csize, usize, name_len, extra_len = fields
        self._expect(
            name_len + extra_len,
            partial(self._on_local_variable, start - 4, flags, method, crc, csize, usize, name_len),
            "the name and extra field of a local file header",
        )

    def _on_local_variable(
        self,
        header_offset: int,
        flags: int,
        method: int,
        crc: int,
        csize: int,
        usize: int,
        name_len: int,
        record: bytes,
        _start: int,
    ) -> None:
        raw_name = record[:name_len]
        name = decode_name(raw_name, flags)
        index = len(self._members)
        header = MemberHeader(index=index, name=name, flags=flags, method=method, header_offset=header_offset)
        where = f"member {name!r} (#{index + 1}, local header at offset {header_offset})"
        if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION | FLAG_MASKED_HEADERS):
            raise UnsafeArchiveError(
                f"{where} is encrypted (flags 0x{flags:04x}); encrypted members are refused"
            )
        if method not in (METHOD_STORED, METHOD_DEFLATED):
            raise UnsafeArchiveError(
                f"{where} uses compression method {method}; only stored (0) and deflate (8) are accepted"
            )
        streamed_sizes = bool(flags & FLAG_DATA_DESCRIPTOR)
        if method == METHOD_STORED and streamed_sizes:
            raise UnsafeArchiveError(
                f"{where} is stored (not compressed) with its size after the data (flag bit 3); "
                "its end cannot be found while streaming"
            )
        zip64 = parse_zip64_extra(
            record[name_len:],
            want_uncompressed=usize == MAGIC32 and not streamed_sizes,
            want_compressed=csize == MAGIC32 and not streamed_sizes,
            want_offset=False,
            want_disk=False,
            where=where,
        )
        if not streamed_sizes:
            if usize == MAGIC32:
                usize = _required(zip64.uncompressed_size if zip64 else None, where, "uncompressed size")
            if csize == MAGIC32:
                csize = _required(zip64.compressed_size if zip64 else None, where, "compressed size")
            if method == METHOD_STORED and csize != usize:
                raise ArchiveCorruptError(
                    f"{where} is stored but its header declares {csize} compressed and {usize} "
                    "uncompressed bytes"
                )
        member = _Member(
            header=header,
            raw_name=raw_name,
            streamed_sizes=streamed_sizes,
            zip64_extra=zip64 is not None,
            declared_crc=crc,
            declared_compressed=csize,
            declared_uncompressed=usize,
        )
        self._sink.member_started(header)
        self._current = member
        if method == METHOD_DEFLATED:
            self._inflater = new_raw_inflater()
            self._mode = _Mode.INFLATE
        else:
            self._mode = _Mode.STORED
        if not streamed_sizes and csize == 0:
            self._end_sized_member(member, inflate_ended=method == METHOD_STORED)

    def _pass_stored(self, view: memoryview) -> int:
        member = self._current
        assert member is not None
        take = min(len(view), member.declared_compressed - member.compressed_seen)
        chunk = view[:take]
        member.crc = crc32(chunk, member.crc)
        member.compressed_seen += take
        member.uncompressed_seen += take
        self._offset += take
        self._sink.member_data(chunk)
        if member.compressed_seen == member.declared_compressed:
            self._end_sized_member(member, inflate_ended=True)
        return take

    def _inflate(self, view: memoryview) -> int:
        member = self._current
        inflater = self._inflater
        assert member is not None and inflater is not None
        limit = INFLATE_INPUT_SLICE
        if not member.streamed_sizes:
            limit = min(limit, member.declared_compressed - member.compressed_seen)
        data = view[:limit]
        pending: bytes | memoryview = data
        try:
            while True:
                out = inflater.decompress(pending, INFLATE_OUTPUT_STEP)
                if out:
                    self._emit(member, out)
                if inflater.eof:
                    used = len(data) - len(inflater.unused_data)
                    break
                pending = inflater.unconsumed_tail
                if not pending and len(out) < INFLATE_OUTPUT_STEP:
                    used = len(data)
                    break
        except InflateError as exc:
            raise ArchiveCorruptError(
                f"{member.where}: invalid deflate data after about {member.compressed_seen} compressed "
                f"bytes: {exc}"
            ) from exc
        member.compressed_seen += used
        self._offset += used
        if inflater.eof:
            self._inflater = None
            if member.streamed_sizes:
                self._expect(4, self._on_descriptor_head, f"the data descriptor of {member.where}")
            else:
                self._end_sized_member(member, inflate_ended=True)
        elif not member.streamed_sizes and member.compressed_seen == member.declared_compressed:
            self._end_sized_member(member, inflate_ended=False)
        return used

    def _emit(self, member: _Member, out: bytes) -> None:
        member.crc = crc32(out, member.crc)
        member.uncompressed_seen += len(out)
        if not member.streamed_sizes and member.uncompressed_seen > member.declared_uncompressed:
            raise ArchiveCorruptError(
                f"{member.where} inflates past the {member.declared_uncompressed} bytes its header declares"
            )
        self._sink.member_data(out)

    def _end_sized_member(self, member: _Member, *, inflate_ended: bool) -> None:
        if not inflate_ended:
            raise ArchiveCorruptError(
                f"{member.where}: the deflate stream does not end within the {member.declared_compressed} "
                "compressed bytes its header declares"
            )
        if member.compressed_seen != member.declared_compressed:
            raise ArchiveCorruptError(
                f"{member.where}: the deflate stream ends after {member.compressed_seen} of the "
                f"{member.declared_compressed} compressed bytes its header declares"
            )
        self._check_member(
            member, member.declared_crc, member.declared_compressed, member.declared_uncompressed, "header"
        )

    def _on_descriptor_head(self, head: bytes, _start: int) -> None:
        member = self._current
        assert member is not None
        wide = member.zip64_extra or max(member.compressed_seen, member.uncompressed_seen) >= MAGIC32
        layout = DESCRIPTOR64 if wide else DESCRIPTOR32
        what = f"the data descriptor of {member.where}"
        if head == DESCRIPTOR_SIG:
            self._expect(layout.size, partial(self._on_descriptor, wide, b""), what)
        else:
            self._expect(layout.size - 4, partial(self._on_descriptor, wide, head), what)

    def _on_descriptor(self, wide: bool, head: bytes, record: bytes, _start: int) -> None:
        member = self._current
        assert member is not None
        layout = DESCRIPTOR64 if wide else DESCRIPTOR32
        crc, csize, usize = layout.unpack(head + record)
        self._check_member(member, crc, csize, usize, "data descriptor")

    def _check_member(self, member: _Member, crc: int, csize: int, usize: int, source: str) -> None:
        actual = (member.crc, member.compressed_seen, member.uncompressed_seen)
        if (crc, csize, usize) != actual:
            raise ArchiveCorruptError(
                f"{member.where}: its {source} says CRC-32 {crc:08x}, {csize} compressed and {usize} "
                f"uncompressed bytes, but the data has CRC-32 {actual[0]:08x}, {actual[1]} compressed "
                f"and {actual[2]} uncompressed bytes"
            )
        streamed = StreamedMember(
            index=member.header.index,
            name=member.header.name,
            crc32=member.crc,
            compressed_size=member.compressed_seen,
            uncompressed_size=member.uncompressed_seen,
            header_offset=member.header.header_offset,
        )
        self._members.append(streamed)
        self._member_raw.append((member.raw_name, member.header.flags, member.header.method))
        self._current = None
        self._sink.member_ended(streamed)
        self._next_signature()

    # --- central directory -----------------------------------------------------------------------

    def _on_central_fixed(self, rest: bytes, start: int) -> None:
        index = len(self._entries)
        if index >= len(self._members):
            raise ArchiveCorruptError(
                f"the central directory lists more than the {len(self._members)} members the archive "
                f"streamed (extra entry at offset {start - 4})"
            )
        fields = CENTRAL_HEADER.unpack(CENTRAL_SIG + rest)
        name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
        self._expect(
            name_len + extra_len + comment_len,
            partial(self._on_central_variable, fields),
            "the name, extra field and comment of a central directory entry",
        )

    def _on_central_variable(self, fields: tuple[int, ...], record: bytes, _start: int) -> None:
        (_sig, made_by, _needed, flags, method, _time, _date, crc, csize, usize, name_len, extra_len,
         _comment_len, disk, _internal, external, offset) = fields  # fmt: skip
        index = len(self._entries)
        streamed = self._members[index]
        raw_local, local_flags, local_method = self._member_raw[index]
        raw_name = record[:name_len]
        name = decode_name(raw_name, flags)
        where = f"central directory entry #{index + 1} ({name!r})"
        zip64 = parse_zip64_extra(
            record[name_len : name_len + extra_len],
            want_uncompressed=usize == MAGIC32,
            want_compressed=csize == MAGIC32,
            want_offset=offset == MAGIC32,
            want_disk=disk == MAGIC16,
            where=where,
        )
        if usize == MAGIC32:
            usize = _required(zip64.uncompressed_size if zip64 else None, where, "uncompressed size")
        if csize == MAGIC32:
            csize = _required(zip64.compressed_size if zip64 else None, where, "compressed size")
        if offset == MAGIC32:
            offset = _required(zip64.header_offset if zip64 else None, where, "local header offset")
        if disk == MAGIC16:
            disk = _required(zip64.disk_start if zip64 else None, where, "disk number")
        problems = [
            f"{label} {stated!r} vs streamed {actual!r}"
            for label, stated, actual in (
                ("name", raw_name, raw_local),
                ("flags", flags, local_flags),
                ("method", method, local_method),
                ("CRC-32", crc, streamed.crc32),
                ("compressed size", csize, streamed.compressed_size),
                ("uncompressed size", usize, streamed.uncompressed_size),
                ("local header offset", offset, streamed.header_offset),
                ("disk", disk, 0),
            )
            if stated != actual
        ]
        if problems:
            raise ArchiveCorruptError(
                f"{where} disagrees with streamed member {streamed.name!r}: {'; '.join(problems)}"
            )
        file_type, unix_mode = file_type_from_attributes(made_by, external)
        self._entries.append(
            CentralEntry(
                index=index,
                name=name,
                crc32=crc,
                compressed_size=csize,
                uncompressed_size=usize,
                header_offset=offset,
                file_type=file_type,
                unix_mode=unix_mode,
            )
        )
        self._next_signature()

    def _close_central_directory(self, end: int) -> None:
        if self._central_end is None:
            if self._central_start is None:
                self._central_start = end
            self._central_end = end

    def _central_figures(self) -> tuple[int, int, int]:
        assert self._central_start is not None and self._central_end is not None
        return len(self._entries), self._central_end - self._central_start, self._central_start

    # --- end records -----------------------------------------------------------------------------

    def _on_zip64_eocd_size(self, record: bytes, start: int) -> None:
        size = int.from_bytes(record, "little")
        if not ZIP64_EOCD_BODY.size <= size <= MAX_ZIP64_EOCD_BYTES:
            raise ArchiveCorruptError(
                f"the zip64 end record at offset {start - 4} declares an impossible size {size}"
            )
        self._expect(size, self._on_zip64_eocd, "the zip64 end of central directory record")

    def _on_zip64_eocd(self, record: bytes, _start: int) -> None:
        _made, _needed, disk, cd_disk, here, total, cd_size, cd_offset = ZIP64_EOCD_BODY.unpack_from(record)
        count, size, offset = self._central_figures()
        stated = (disk, cd_disk, here, total, cd_size, cd_offset)
        if stated != (0, 0, count, count, size, offset):
            raise ArchiveCorruptError(
                f"the zip64 end record (disk {disk}/{cd_disk}, {here}/{total} entries, directory of "
                f"{cd_size} bytes at {cd_offset}) disagrees with the archive ({count} entries, "
                f"directory of {size} bytes at {offset})"
            )
        self._phase = _Phase.AFTER_ZIP64_EOCD
        self._next_signature()

    def _on_zip64_locator(self, rest: bytes, _start: int) -> None:
        _sig, disk, eocd_offset, disks = ZIP64_LOCATOR.unpack(ZIP64_LOCATOR_SIG + rest)
        if disk != 0 or eocd_offset != self._zip64_eocd_offset or disks not in (0, 1):
            raise ArchiveCorruptError(
                f"the zip64 end locator points to offset {eocd_offset} on disk {disk} of {disks}, but the "
                f"zip64 end record is at offset {self._zip64_eocd_offset}"
            )
        self._phase = _Phase.AFTER_LOCATOR
        self._next_signature()

    def _on_eocd(self, rest: bytes, _start: int) -> None:
        _sig, disk, cd_disk, here, total, cd_size, cd_offset, comment_len = EOCD.unpack(EOCD_SIG + rest)
        count, size, offset = self._central_figures()
        zip64 = self._zip64_eocd_offset is not None
        problems = [
            f"{label} {stated} (the archive has {actual})"
            for label, stated, actual, magic in (
                ("this disk", disk, 0, None),
                ("directory disk", cd_disk, 0, None),
                ("entries on this disk", here, count, MAGIC16),
                ("entries in total", total, count, MAGIC16),
                ("directory size", cd_size, size, MAGIC32),
                ("directory offset", cd_offset, offset, MAGIC32),
            )
            if stated != actual and not (zip64 and stated == magic)
        ]
        if problems:
            raise ArchiveCorruptError(f"the end of central directory record disagrees: {'; '.join(problems)}")
        if count != len(self._members):
            raise ArchiveCorruptError(
                f"the archive streamed {len(self._members)} members but its central directory lists {count}"
            )
        self._expect(comment_len, self._on_comment, f"the {comment_len}-byte archive comment")

    def _on_comment(self, comment: bytes, _start: int) -> None:
        self._comment = comment
        self._phase = _Phase.DONE
        self._mode = _Mode.DONE
        self._index = ArchiveIndex(
            members=tuple(self._members),
            entries=tuple(self._entries),
            comment=comment,
            archive_bytes=self._offset,
            zip64=self._zip64_eocd_offset is not None,
        )


def _required(value: int | None, where: str, what: str) -> int:
    if value is None:
        raise ArchiveCorruptError(f"{where}: its {what} is deferred to a zip64 extra field that is missing")
    return value
