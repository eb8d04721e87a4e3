"""Parse ``md5hashes.csv``, the per-file MD5 list NBIA appends to a series zip.

The server writes ``Filename,MD5Hash`` then one ``<name>,<32 lowercase hex>`` row per DICOM
file, ``\\n`` line endings, rows in hash-map order. Tolerated because harmless: a UTF-8 BOM,
CRLF, upper-case hex, a missing header, blank lines. Refused because they make the list say
something other than "this file has this hash": names with a path separator, rows that are
not exactly two fields, hashes that are not 32 hex digits, the same name twice.
"""

from __future__ import annotations

import re

from tcia_fetch.errors import ChecksumMismatchError

__all__ = ["MD5_LIST_NAME", "parse_md5_list"]

MD5_LIST_NAME = "md5hashes.csv"
_HEADER = ("filename", "md5hash")
_HEX32 = re.compile(r"[0-9a-f]{32}")


def parse_md5_list(data: bytes) -> dict[str, str]:
    """Map each listed file name to its lower-case MD5; raise ChecksumMismatchError if malformed."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChecksumMismatchError(f"{MD5_LIST_NAME} is not UTF-8 text (byte {exc.start})") from exc
    hashes: dict[str, str] = {}
    first_row = True
    for line_number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split(",")
        where = f"{MD5_LIST_NAME} line {line_number}"
        if len(fields) != 2:
            raise ChecksumMismatchError(f"{where} has {len(fields)} fields, expected 2: {line[:120]!r}")
        name, digest = fields[0].strip(), fields[1].strip().lower()
        if first_row and (name.lower(), digest) == _HEADER:
            first_row = False
            continue
        first_row = False
        if not name:
            raise ChecksumMismatchError(f"{where} has an empty file name")
        if "/" in name or "\\" in name:
            raise ChecksumMismatchError(f"{where} names {name[:120]!r}, which contains a path separator")
        if _HEX32.fullmatch(digest) is None:
            raise ChecksumMismatchError(f"{where}: {digest[:80]!r} is not a 32-digit hex MD5 for {name!r}")
        if name in hashes:
            raise ChecksumMismatchError(f"{where} lists {name!r} a second time")
        hashes[name] = digest
    return hashes
