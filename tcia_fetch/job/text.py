"""Bytes on disk to text lines: the one place user files are read and decoded.

Every input file (job file, ``.tcia`` manifest, CSV/TSV list) goes through here so that all
of them accept the same encodings and fail the same way: UTF-8 with or without a byte-order
mark, or UTF-16 when a byte-order mark says so (PowerShell's ``>`` writes that); anything else
is an :class:`~tcia_fetch.errors.InputError` naming the file, the line and the byte offset.
Binary files (a zip archive, a DICOM file, NUL bytes) are refused with a message that says
what they look like, never parsed as text and never a crash.
"""

from __future__ import annotations

import re
from pathlib import Path

from tcia_fetch.errors import InputError

__all__ = [
    "MAX_INPUT_BYTES",
    "decode_input",
    "excerpt",
    "read_input_bytes",
    "split_lines",
]

#: Largest input file accepted. 10^6 manifest lines are about 65 MB; far larger is a mistake
#: (a wrong file) and would only exhaust memory on a login node.
MAX_INPUT_BYTES = 512 * 1024 * 1024

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_EXCERPT_CHARS = 60


def read_input_bytes(path: Path) -> bytes:
    """Read a whole user input file, turning every OS failure into an InputError naming it."""
    source = str(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise InputError("is a directory, not a file", source=source)
        if size > MAX_INPUT_BYTES:
            raise InputError(
                f"file is {size} bytes; inputs larger than {MAX_INPUT_BYTES} bytes are refused "
                "(is this the right file?)",
                source=source,
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", source=source) from None
    except PermissionError:
        raise InputError("permission denied reading the file", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", source=source) from exc


def decode_input(data: bytes, *, source: str) -> str:
    """Decode a user file to text, or raise InputError saying where and why it is not text.

    Accepts UTF-8 (a leading byte-order mark is removed) and BOM-marked UTF-16. The result
    never contains a BOM at its start, so callers can compare the first line directly.
    """
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        raise InputError("this is a zip archive, not a text list of series", source=source)
    if data[128:132] == b"DICM":
        raise InputError("this is a DICOM file, not a text list of series", source=source)
    if data.startswith(_UTF16_BOMS):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"not valid UTF-16 text (byte-order mark present): bad bytes at offset {exc.start}",
                source=source,
            ) from None
        return _refuse_nul(text.removeprefix("\ufeff"), source)
    body = data.removeprefix(_UTF8_BOM)
    offset_base = len(data) - len(body)
    nul = body.find(b"\x00")
    if nul != -1:
        raise InputError(
            f"NUL byte at byte offset {nul + offset_base}: this looks like a binary file, not text",
            source=source,
            location=str(body.count(b"\n", 0, nul) + 1),
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = body[exc.start]
        raise InputError(
            f"not UTF-8 text: byte 0x{bad:02x} at byte offset {exc.start + offset_base} cannot be "
            "decoded (save the file as UTF-8)",
            source=source,
            location=str(body.count(b"\n", 0, exc.start) + 1),
        ) from None


def _refuse_nul(text: str, source: str) -> str:
    nul = text.find("\x00")
    if nul != -1:
        raise InputError(
            "NUL character in the text: this looks like a binary file",
            source=source,
            location=str(text.count("\n", 0, nul) + 1),
        )
    return text


def split_lines(text: str) -> list[str]:
    """Split on LF, CRLF or lone CR only (never on form feeds or Unicode separators).

    Line numbers derived from the result (index + 1) match what an editor shows. A final line
    break does not produce an extra empty line.
    """
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def excerpt(text: str) -> str:
    """A short, printable rendering of a user's line for messages and reports.

    Control and other unprintable characters are shown as escapes, so a message never carries
    raw terminal escape codes or invisible characters; long lines are cut with an ellipsis.
    """
    cut = text[:_EXCERPT_CHARS]
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)
    return shown + "…" if len(text) > _EXCERPT_CHARS else shown
