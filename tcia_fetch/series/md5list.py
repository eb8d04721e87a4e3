"""Parse ``md5hashes.csv``, the per-file MD5 list NBIA appends to a series zip, as it streams.

The server writes ``Filename,MD5Hash`` then one ``<name>,<32 lowercase hex>`` row per DICOM
file, ``\\n`` line endings, rows in hash-map order. Tolerated because harmless: a UTF-8 BOM,
CRLF, upper-case hex, a missing header, blank lines. Refused because they make the list say
something other than "this file has this hash": names with a path separator, rows that are
not exactly two fields, hashes that are not 32 hex digits, the same name twice.

The list is never held whole: :class:`Md5ListParser` keeps only the name -> MD5 map of real
rows and at most one unfinished line (:data:`MAX_LINE_BYTES`), and refuses more rows than the
caller allows. Runs of blank lines are skipped by a C-level scan, so a list padded with a GiB
of newlines costs a little CPU up to the byte cap the extractor enforces, and no memory.
"""

from __future__ import annotations

import re

from tcia_fetch.errors import ChecksumMismatchError

__all__ = ["MAX_LINE_BYTES", "MD5_LIST_NAME", "Md5ListParser", "parse_md5_list"]

MD5_LIST_NAME = "md5hashes.csv"
_HEADER = ("filename", "md5hash")
_HEX32 = re.compile(r"[0-9a-f]{32}")


#: A real row is a file name (at most 255 bytes on any filesystem NBIA writes to), a comma, 32
#: hex digits and a line ending: about 300 bytes at the very most. 1 KiB leaves room to spare.
MAX_LINE_BYTES = 1 << 10
_BOM = b"\xef\xbb\xbf"
_CONTENT = re.compile(rb"[^\r\n]")


class Md5ListParser:
    """Incremental ``md5hashes.csv`` parser: ``feed()`` the member's bytes, then ``finish()``.

    ``max_entries`` is the most rows the list may hold (the DICOM members the archive can have);
    one more is refused at once. Malformed rows raise :class:`ChecksumMismatchError` with their
    line number as soon as their line ends.
    """

    def __init__(self, *, max_entries: int) -> None:
        self.max_entries = max_entries
        self.hashes: dict[str, str] = {}
        self._partial = bytearray()
        self._newlines = 0
        self._first_row = True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the list; complete lines are parsed now."""
        chunk = bytes(data)
        position = 0
        if self._partial:
            end = chunk.find(b"\n")
            if end < 0:
                self._keep_partial(chunk)
                return
            self._keep_partial(chunk[:end])
            line, self._partial = bytes(self._partial), bytearray()
            self._row(line)
            self._newlines += 1
            position = end + 1
        while True:
            content = _CONTENT.search(chunk, position)
            if content is None:  # the rest is blank lines: count them, keep nothing
                self._newlines += chunk.count(b"\n", position)
                return
            start = content.start()
            self._newlines += chunk.count(b"\n", position, start)
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep_partial(chunk[start:])
                return
            if end - start > MAX_LINE_BYTES:
                self._line_too_long(end - start)
            self._row(chunk[start:end])
            self._newlines += 1
            position = end + 1

    def finish(self) -> dict[str, str]:
        """The map of listed names to lower-case MD5s (an unterminated last line counts)."""
        if self._partial:
            line, self._partial = bytes(self._partial), bytearray()
            self._row(line)
        return self.hashes

    def _keep_partial(self, piece: bytes) -> None:
        if len(self._partial) + len(piece) > MAX_LINE_BYTES:
            self._line_too_long(len(self._partial) + len(piece))
        self._partial += piece

    def _line_too_long(self, size: int) -> None:
        raise ChecksumMismatchError(
            f"{MD5_LIST_NAME} line {self._newlines + 1} is longer than {MAX_LINE_BYTES} bytes "
            f"({size}+ bytes): not a file name and an MD5"
        )

    def _row(self, raw: bytes) -> None:
        line_number = self._newlines + 1
        where = f"{MD5_LIST_NAME} line {line_number}"
        if line_number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as exc:
            raise ChecksumMismatchError(f"{where} is not UTF-8 text (byte {exc.start})") from exc
        if not line.strip():
            return
        fields = line.split(",")
        if len(fields) != 2:
            raise ChecksumMismatchError(f"{where} has {len(fields)} fields, expected 2: {line[:120]!r}")
        name, digest = fields[0].strip(), fields[1].strip().lower()
        if self._first_row and (name.lower(), digest) == _HEADER:
            self._first_row = False
            return
        self._first_row = False
        if not name:
            raise ChecksumMismatchError(f"{where} has an empty file name")
        if "/" in name or "\\" in name:
            raise ChecksumMismatchError(f"{where} names {name[:120]!r}, which contains a path separator")
        if _HEX32.fullmatch(digest) is None:
            raise ChecksumMismatchError(f"{where}: {digest[:80]!r} is not a 32-digit hex MD5 for {name!r}")
        if name in self.hashes:
            raise ChecksumMismatchError(f"{where} lists {name!r} a second time")
        if len(self.hashes) >= self.max_entries:
            raise ChecksumMismatchError(
                f"{where} lists {name[:120]!r}, one file more than the {self.max_entries} DICOM member(s) "
                "received: at least one listed file is not a DICOM member of the archive"
            )
        self.hashes[name] = digest


def parse_md5_list(data: bytes, *, max_entries: int | None = None) -> dict[str, str]:
    """Map each listed file name to its lower-case MD5; raise ChecksumMismatchError if malformed.

    The whole-buffer form of :class:`Md5ListParser` (for lists already in memory, e.g. the fuzzer).
    """
    parser = Md5ListParser(max_entries=max_entries if max_entries is not None else len(data))
    parser.feed(data)
    return parser.finish()
