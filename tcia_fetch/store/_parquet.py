"""A small Parquet writer for the catalog's two tables: pure Python plus zstandard.

Why not pyarrow: importing it costs about 45 MB of resident memory and a few tenths of a second,
too much to pay at the end of every run (issue 9: a run's whole process tree under 100 MB at 64
streams; a 600-tiny-series run no slower than tcia-utils). Until 2026-12 a child process imported
it to write these tables: 57 MB more for the tree and 0.3-0.5 s more wall at the end of each run.
These tables are a few flat columns of strings and integers and one list of strings, written in
row groups of a few thousand rows, so they need only a small subset of the format:

* one V1 data page per column per row group; values PLAIN, definition and repetition levels in
  the RLE/bit-packed hybrid (RLE runs only), the page body compressed with zstd;
* every column optional (nullable), as pyarrow writes them; a list column in the standard three
  levels (``optional group name (LIST) { repeated group list { optional element } }``);
* converted types beside logical types, for older readers; no dictionary pages, no statistics,
  no page index (readers do without: DuckDB and pyarrow read every column back,
  tests/store/test_parquet.py).

The footer is Thrift's compact protocol, hand-encoded by :class:`_Struct` (field ids and types as
in the format's ``parquet.thrift``). Synchronous; the caller owns the file object.
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final, NamedTuple, Self

import zstandard

__all__ = ["Column", "ColumnKind", "ParquetWriter"]

_MAGIC: Final = b"PAR1"
_ZSTD_LEVEL: Final = 3

# Thrift compact protocol type ids.
_TRUE, _FALSE, _I32, _I64, _BINARY, _LIST, _STRUCT = 1, 2, 5, 6, 8, 9, 12
# parquet.thrift enums.
_INT64, _BYTE_ARRAY = 2, 6
_OPTIONAL, _REPEATED = 1, 2
_CONVERTED_UTF8, _CONVERTED_LIST, _CONVERTED_TIMESTAMP_MILLIS = 0, 3, 9
_PLAIN, _RLE = 0, 3
_CODEC_ZSTD = 6
_DATA_PAGE = 0
_INT64_FORMAT: Final = struct.Struct("<q")


class ColumnKind(enum.Enum):
    """What a column holds, as Python values: ``None`` is null in every kind."""

    STRING = "string"  #: str
    INT64 = "int64"  #: int
    TIMESTAMP_MS_UTC = "timestamp_ms_utc"  #: int, milliseconds since the epoch, UTC
    STRING_LIST = "string_list"  #: list of str (an element may be None)


class Column(NamedTuple):
    """One column of a table: its name and kind."""

    name: str
    kind: ColumnKind


class ParquetWriter:
    """Writes one Parquet file to ``out``: :meth:`append` rows, then :meth:`close` (which writes
    the last row group and the footer; without it the file is not Parquet).

    Each value is encoded into its column's buffer as it is appended, so a row group waiting to
    be written takes about its encoded size, not a Python object per value. A row group goes out
    once ``row_group_rows`` rows or ``row_group_bytes`` of encoded values wait (or at
    :meth:`flush`), so memory is bounded however many rows come and however wide they are. A
    row refused for a value of the wrong type leaves the writer unusable (its columns would no
    longer line up).
    """

    def __init__(
        self,
        out: BinaryIO,
        columns: Sequence[Column],
        *,
        created_by: str,
        row_group_rows: int = 4096,
        row_group_bytes: int = 2 << 20,
    ) -> None:
        if not columns or len({column.name for column in columns}) != len(columns):
            raise ValueError("a table needs at least one column and unique column names")
        self._out = out
        self._row_group_rows = row_group_rows
        self._row_group_bytes = row_group_bytes
        self._columns = tuple(columns)
        self._buffers = [_ColumnBuffer(column.kind) for column in columns]
        self._created_by = created_by
        self._compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self._row_groups: list[_Struct] = []
        self._rows = 0
        self._broken = False
        #: Rows appended since the last row group, and their encoded bytes.
        self.buffered_rows = 0
        self.buffered_bytes = 0
        self._offset = out.write(_MAGIC)

    def append(self, row: Sequence[object]) -> None:
        """Add one row: a sequence of values in column order."""
        if self._broken:
            raise ValueError("this writer refused a row earlier; its table cannot be finished")
        if len(row) != len(self._columns):
            raise ValueError(f"every row needs {len(self._columns)} values, one per column")
        added = 0
        try:
            for buffer, value in zip(self._buffers, row, strict=True):
                added += buffer.add(value)
        except (TypeError, struct.error):  # struct.error: an int out of int64's range
            self._broken = True
            raise
        self.buffered_rows += 1
        self.buffered_bytes += added
        if self.buffered_rows >= self._row_group_rows or self.buffered_bytes >= self._row_group_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the rows appended so far as one row group (nothing when there are none)."""
        if not self.buffered_rows:
            return
        start = self._offset
        chunks: list[_Struct] = []
        uncompressed_total = 0
        for column, buffer in zip(self._columns, self._buffers, strict=True):
            chunk, uncompressed = self._write_column_chunk(column, buffer)
            chunks.append(chunk)
            uncompressed_total += uncompressed
            buffer.clear()
        group = (
            _Struct()
            .structs(1, chunks)
            .i64(2, uncompressed_total)
            .i64(3, self.buffered_rows)
            .i64(5, start)
            .i64(6, self._offset - start)
        )
        self._row_groups.append(group)
        self._rows += self.buffered_rows
        self.buffered_rows = 0
        self.buffered_bytes = 0

    def close(self) -> None:
        """Flush, then write the footer (schema, row groups) and the closing magic."""
        if self._broken:
            raise ValueError("this writer refused a row earlier; its table cannot be finished")
        self.flush()
        footer = (
            _Struct()
            .i32(1, 2)
            .structs(2, _schema(self._columns))
            .i64(3, self._rows)
            .structs(4, self._row_groups)
            .binary(6, self._created_by.encode())
            .encode()
        )
        self._out.write(footer)
        self._out.write(struct.pack("<I", len(footer)))
        self._out.write(_MAGIC)

    def _write_column_chunk(self, column: Column, buffer: _ColumnBuffer) -> tuple[_Struct, int]:
        body = buffer.page_body()
        level_count = len(buffer.definition)
        compressed = self._compressor.compress(body)
        page_header = (
            _Struct()
            .i32(1, _DATA_PAGE)
            .i32(2, len(body))
            .i32(3, len(compressed))
            .struct(5, _Struct().i32(1, level_count).i32(2, _PLAIN).i32(3, _RLE).i32(4, _RLE))
            .encode()
        )
        page_offset = self._offset
        self._offset += self._out.write(page_header) + self._out.write(compressed)
        path = [column.name, "list", "element"] if column.kind is ColumnKind.STRING_LIST else [column.name]
        leaf_type = _INT64 if column.kind in (ColumnKind.INT64, ColumnKind.TIMESTAMP_MS_UTC) else _BYTE_ARRAY
        metadata = (
            _Struct()
            .i32(1, leaf_type)
            .i32s(2, [_PLAIN, _RLE])
            .binaries(3, [part.encode() for part in path])
            .i32(4, _CODEC_ZSTD)
            .i64(5, level_count)
            .i64(6, len(page_header) + len(body))
            .i64(7, len(page_header) + len(compressed))
            .i64(9, page_offset)
        )
        return _Struct().i64(2, page_offset).struct(3, metadata), len(page_header) + len(body)


class _ColumnBuffer:
    """One column's part of the row group being gathered: its levels (a byte each) and its
    PLAIN-encoded values. ``add`` encodes one value and returns the bytes it added."""

    __slots__ = ("add", "data", "definition", "kind", "repetition")

    def __init__(self, kind: ColumnKind) -> None:
        self.kind = kind
        self.definition = bytearray()
        self.repetition = bytearray()
        self.data = bytearray()
        adders: dict[ColumnKind, Callable[[object], int]] = {
            ColumnKind.STRING: self._add_string,
            ColumnKind.INT64: self._add_int,
            ColumnKind.TIMESTAMP_MS_UTC: self._add_int,
            ColumnKind.STRING_LIST: self._add_list,
        }
        self.add = adders[kind]

    def clear(self) -> None:
        self.definition.clear()
        self.repetition.clear()
        self.data.clear()

    def _add_string(self, value: object) -> int:
        if value is None:
            self.definition.append(0)
            return 1
        self.definition.append(1)
        return 1 + self._put_string(value)

    def _add_int(self, value: object) -> int:
        if value is None:
            self.definition.append(0)
            return 1
        if type(value) is not int:
            raise TypeError(f"an {self.kind.value} column needs int values, got {type(value).__name__}")
        self.data += _INT64_FORMAT.pack(value)
        self.definition.append(1)
        return 9

    def _put_string(self, value: object) -> int:
        if not isinstance(value, str):
            raise TypeError(f"a string column needs str values, got {type(value).__name__}")
        encoded = value.encode()
        self.data += len(encoded).to_bytes(4, "little")
        self.data += encoded
        return 4 + len(encoded)

    def _add_list(self, value: object) -> int:
        if value is None:
            self.repetition.append(0)
            self.definition.append(0)
            return 2
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"a list column needs lists, got {type(value).__name__}")
        added = 0
        for element in value:
            if element is not None:
                added += self._put_string(element)
        if not value:
            self.repetition.append(0)
            self.definition.append(1)
            return 2
        self.repetition.append(0)
        self.repetition += b"\x01" * (len(value) - 1)
        self.definition += bytes(2 if element is None else 3 for element in value)
        return added + 2 * len(value)

    def page_body(self) -> bytes:
        """The V1 data page's uncompressed body: levels, then values."""
        if self.kind is ColumnKind.STRING_LIST:
            levels = _levels(self.repetition, max_level=1) + _levels(self.definition, max_level=3)
        else:
            levels = _levels(self.definition, max_level=1)
        return levels + bytes(self.data)


def _levels(levels: bytearray, *, max_level: int) -> bytes:
    """Levels in the RLE/bit-packed hybrid, as RLE runs only, behind their 4-byte length (V1 pages)."""
    width = (max_level.bit_length() + 7) // 8
    out = bytearray()
    for level, run in itertools.groupby(levels):
        out += _varint(sum(1 for _ in run) << 1)
        out += level.to_bytes(width, "little")
    return len(out).to_bytes(4, "little") + bytes(out)


def _schema(columns: Sequence[Column]) -> list[_Struct]:
    elements = [_Struct().binary(4, b"schema").i32(5, len(columns))]
    for column in columns:
        name = column.name.encode()
        if column.kind is ColumnKind.STRING:
            elements.append(_string_element(name))
        elif column.kind is ColumnKind.INT64:
            elements.append(_Struct().i32(1, _INT64).i32(3, _OPTIONAL).binary(4, name))
        elif column.kind is ColumnKind.TIMESTAMP_MS_UTC:
            millis = _Struct().struct(1, _Struct())
            timestamp = _Struct().boolean(1, True).struct(2, millis)
            elements.append(
                _Struct()
                .i32(1, _INT64)
                .i32(3, _OPTIONAL)
                .binary(4, name)
                .i32(6, _CONVERTED_TIMESTAMP_MILLIS)
                .struct(10, _Struct().struct(8, timestamp))
            )
        else:
            elements.append(
                _Struct()
                .i32(3, _OPTIONAL)
                .binary(4, name)
                .i32(5, 1)
                .i32(6, _CONVERTED_LIST)
                .struct(10, _Struct().struct(3, _Struct()))
            )
            elements.append(_Struct().i32(3, _REPEATED).binary(4, b"list").i32(5, 1))
            elements.append(_string_element(b"element"))
    return elements


def _string_element(name: bytes) -> _Struct:
    return (
        _Struct()
        .i32(1, _BYTE_ARRAY)
        .i32(3, _OPTIONAL)
        .binary(4, name)
        .i32(6, _CONVERTED_UTF8)
        .struct(10, _Struct().struct(1, _Struct()))
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> bytes:
    return _varint((value << 1) ^ (value >> 63))


class _Struct:
    """One Thrift struct in the compact protocol, built field by field in increasing id order."""

    __slots__ = ("_last", "_out")

    def __init__(self) -> None:
        self._out = bytearray()
        self._last = 0

    def _field(self, field_id: int, type_id: int) -> None:
        if not self._last < field_id:
            raise ValueError("fields must be added in increasing id order")
        delta = field_id - self._last
        if delta <= 15:
            self._out.append(delta << 4 | type_id)
        else:
            self._out.append(type_id)
            self._out += _zigzag(field_id)
        self._last = field_id

    def _list_header(self, field_id: int, type_id: int, size: int) -> None:
        self._field(field_id, _LIST)
        if size < 15:
            self._out.append(size << 4 | type_id)
        else:
            self._out.append(0xF0 | type_id)
            self._out += _varint(size)

    def i32(self, field_id: int, value: int) -> Self:
        self._field(field_id, _I32)
        self._out += _zigzag(value)
        return self

    def i64(self, field_id: int, value: int) -> Self:
        self._field(field_id, _I64)
        self._out += _zigzag(value)
        return self

    def boolean(self, field_id: int, value: bool) -> Self:
        self._field(field_id, _TRUE if value else _FALSE)
        return self

    def binary(self, field_id: int, value: bytes) -> Self:
        self._field(field_id, _BINARY)
        self._out += _varint(len(value))
        self._out += value
        return self

    def struct(self, field_id: int, value: _Struct) -> Self:
        self._field(field_id, _STRUCT)
        self._out += value.encode()
        return self

    def i32s(self, field_id: int, values: Sequence[int]) -> Self:
        self._list_header(field_id, _I32, len(values))
        for value in values:
            self._out += _zigzag(value)
        return self

    def binaries(self, field_id: int, values: Sequence[bytes]) -> Self:
        self._list_header(field_id, _BINARY, len(values))
        for value in values:
            self._out += _varint(len(value))
            self._out += value
        return self

    def structs(self, field_id: int, values: Sequence[_Struct]) -> Self:
        self._list_header(field_id, _STRUCT, len(values))
        for value in values:
            self._out += value.encode()
        return self

    def encode(self) -> bytes:
        """The struct's bytes, ending with its stop field."""
        return bytes(self._out) + b"\x00"
