"""Streamed row parsers: same rows as the whole-body parsers, whatever the chunking; bounded rows."""

from __future__ import annotations

import gzip
import zlib

import pytest

from tcia_fetch.api.parse import Row, parse_csv_rows, parse_json_rows
from tcia_fetch.api.rowstream import CsvRowStream, RowStream, row_stream_for
from tcia_fetch.bodylimit import BodyDecoder
from tcia_fetch.errors import BodyTooLargeError, ResponseFormatError

_JSON_BODIES = [
    b"",
    b"  \n",
    b'[{"Collection":"A","Count":3},{"Collection":{}},{"Modality":null,"X":1.5}]',
    b'\xef\xbb\xbf[{"a":"\xc3\xa9t\xc3\xa9"}]',
    b'{"TotalSizeInBytes":"500.000000","ObjectCount":2}',
    b"[]",
]

_CSV_BODY = (
    b'"Series UID","Collection","Series Description"\r\n'
    b'"1.2.3","HN","two\r\nlines, and ""quotes"""\r\n'
    b'"1.2.4","HN",""\r\n'
    b"\r\n"
    b'"1.2.5","LUNG","last without newline"'
)


def _stream(parser: RowStream, body: bytes, step: int) -> list[Row]:
    rows: list[Row] = []
    for start in range(0, len(body), step):
        rows += parser.feed(body[start : start + step])
    return rows + parser.close()


@pytest.mark.parametrize("body", _JSON_BODIES)
@pytest.mark.parametrize("step", [1, 3, 1 << 20])
def test_json_stream_matches_the_whole_body_parser(body: bytes, step: int) -> None:
    assert _stream(row_stream_for("application/json"), body, step) == parse_json_rows(body)


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_csv_stream_keeps_quoted_newlines_and_matches(step: int) -> None:
    rows = _stream(row_stream_for("text/csv"), _CSV_BODY, step)
    assert rows == parse_csv_rows(_CSV_BODY)
    assert rows[0]["Series Description"] == 'two\r\nlines, and "quotes"' and len(rows) == 3


@pytest.mark.parametrize(
    ("content_type", "body", "match"),
    [
        ("application/json", b"<html>oops</html>", "expected JSON"),
        ("text/html", b"<html>maintenance</html>", "HTML page"),
        ("application/json", b"[1, 2]", "not an object"),
        ("application/json", b'[{"a": 1}, {"b"', "truncated"),
        ("text/csv", b'"a","b"\r\n"1"\r\n', "has 1 fields"),
        ("text/csv", b'"a","b"\r\n"1","unterminated', "inside a quoted field"),
        ("text/csv", b"[{}]", "expected CSV"),
    ],
)
def test_broken_bodies_are_format_errors(content_type: str, body: bytes, match: str) -> None:
    with pytest.raises(ResponseFormatError, match=match):
        _stream(row_stream_for(content_type), body, 4)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'[{"a":"' + b"x" * 200_000),  # a string that never ends
        ("application/json", b" " * 200_000),  # whitespace forever
        ("application/json", b"[" * 200_000),  # nesting forever
        ("text/csv", b'"a"\r\n"' + b"y" * 200_000),  # a quoted field that never ends
        ("text/csv", b"\x00" * 200_000),  # a plain zero-filled bomb
    ],
)
def test_a_row_never_grows_past_the_row_bound(content_type: str, body: bytes) -> None:
    parser = row_stream_for(content_type, max_row_bytes=64 * 1024)
    with pytest.raises(BodyTooLargeError, match="row"):
        for start in range(0, len(body), 8192):
            parser.feed(body[start : start + 8192])


def test_csv_row_bound_counts_the_pending_record_only() -> None:
    parser = CsvRowStream(max_row_bytes=100)
    rows: list[Row] = []
    for _ in range(1000):
        rows += parser.feed(b'"k"\r\n' if not rows and parser._header is None else b'"value-of-a-row"\r\n')
    assert len(rows) >= 998  # 18 kB in total, but no single record near 100 bytes


def _decode_all(decoder: BodyDecoder, body: bytes, step: int = 65536) -> bytes:
    out: list[bytes] = []
    for start in range(0, len(body), step):
        out += decoder.feed(body[start : start + step])
    return b"".join(out + decoder.finish())


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "deflate-raw", None, "identity"])
def test_decoder_round_trips_real_encodings(encoding: str | None) -> None:
    data = b'{"row": "a fairly compressible row"},' * 20_000
    if encoding in ("gzip", "x-gzip"):
        body = gzip.compress(data)
    elif encoding == "deflate":
        body = zlib.compress(data)
    elif encoding == "deflate-raw":
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        body, encoding = compressor.compress(data) + compressor.flush(), "deflate"
    else:
        body = data
    decoder = BodyDecoder(encoding, limit=None, max_ratio=200, what="getX")
    assert _decode_all(decoder, body, step=7 if encoding not in (None, "identity") else 4096) == data


def test_decoder_refuses_a_bomb_after_a_few_mib_and_never_buffers_it() -> None:
    bomb = gzip.compress(bytes(16 * 2**20), compresslevel=9)  # ~16 kB on the wire
    decoder = BodyDecoder("gzip", limit=None, max_ratio=200, what="getCollectionValues")
    biggest = 0
    with pytest.raises(BodyTooLargeError, match="decompression bomb"):
        for start in range(0, len(bomb), 65536):
            for piece in decoder.feed(bomb[start : start + 65536]):
                biggest = max(biggest, len(piece))
    assert decoder.decoded_bytes < 8 * 2**20 and biggest <= 256 * 1024


@pytest.mark.parametrize("step", [64, 1024, 65536])
def test_a_bomb_is_named_a_bomb_before_the_row_bound_whatever_the_reads(step: int) -> None:
    # The decoder's ratio rule must fire before the CSV parser's row bound, or the user reads
    # "a CSV record longer than ..." when the socket delivered the bomb in small reads.
    bomb = gzip.compress(bytes(8 * 2**20), compresslevel=9)
    decoder = BodyDecoder("gzip", limit=None, max_ratio=200, what="getSeriesMetadata")
    parser = CsvRowStream(what="getSeriesMetadata")
    with pytest.raises(BodyTooLargeError, match="decompression bomb"):
        for start in range(0, len(bomb), step):
            for piece in decoder.feed(bomb[start : start + step]):
                parser.feed(piece)


def test_decoder_ceiling_and_declared_length() -> None:
    decoder = BodyDecoder(None, limit=1000, max_ratio=200, what="getSeries", limit_hint="max_body_bytes")
    with pytest.raises(BodyTooLargeError, match="declares"):
        decoder.check_declared_length(5000)
    decoder.feed(b"x" * 1000)
    with pytest.raises(BodyTooLargeError, match=r"getSeries.*max_body_bytes"):
        decoder.feed(b"x")


@pytest.mark.parametrize("encoding", ["br", "gzip, gzip", "compress"])
def test_decoder_refuses_unknown_encodings(encoding: str) -> None:
    with pytest.raises(ResponseFormatError, match="Content-Encoding"):
        BodyDecoder(encoding, limit=None, max_ratio=200, what="x")


def test_truncated_gzip_is_a_format_error() -> None:
    body = gzip.compress(b"[" + b'{"a":1},' * 1000 + b"]")
    decoder = BodyDecoder("gzip", limit=None, max_ratio=200, what="x")
    with pytest.raises(ResponseFormatError, match="ends before"):
        _decode_all(decoder, body[: len(body) // 2])


def _mutants(seed: int, count: int) -> list[tuple[str, bytes]]:
    import random

    rng = random.Random(seed)
    bases = [("application/json", body) for body in _JSON_BODIES if body.strip()] + [("text/csv", _CSV_BODY)]
    out = []
    for _ in range(count):
        content_type, body = rng.choice(bases)
        data = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            position = rng.randrange(len(data) + 1)
            if action < 0.4 and data:
                data[min(position, len(data) - 1)] = rng.choice(b'"{}[],:\\\r\n x0\x00\xff')
            elif action < 0.7:
                del data[position:]
            else:
                data[position:position] = rng.choice([b'"', b"{", b"]", b",", b"\r\n", b"null", b"\xc3"])
        out.append((content_type, bytes(data)))
    return out


@pytest.mark.parametrize(("content_type", "body"), _mutants(seed=14, count=150))
def test_streamed_parser_never_accepts_more_than_the_whole_parser(content_type: str, body: bytes) -> None:
    from tcia_fetch.api.parse import parse_rows
    from tcia_fetch.errors import TciaFetchError

    try:
        expected: list[dict[str, object]] | None = parse_rows(body, content_type)
    except ResponseFormatError:
        expected = None
    try:
        got: list[dict[str, object]] | None = _stream(row_stream_for(content_type), body, 5)
    except TciaFetchError:
        got = None
    # Never different rows, never accepting what the whole-body parser refuses. The streamed CSV
    # parser may refuse more: a stray quote in an unquoted field makes it wait for the closing one.
    assert got is None or got == expected
