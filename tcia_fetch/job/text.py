"""Bytes on disk to text lines: the one place user files are read and decoded.

Every input file (job file, ``.tcia`` manifest, CSV/TSV list) goes through here so that all
of them accept the same encodings and fail the same way: UTF-8 with or without a byte-order
mark, or UTF-16 when a byte-order mark says so (PowerShell's ``>`` writes that); anything else
is an :class:`~tcia_fetch.errors.InputError` naming the file, the line and the byte offset.
Binary files (a zip archive, a DICOM file, NUL bytes) are refused with a message that says
what they look like, never parsed as text and never a crash.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

from tcia_fetch.errors import InputError

__all__ = [
    "MAX_INPUT_BYTES",
    "decode_input",
    "excerpt",
    "iter_input_lines",
    "iter_lines",
    "read_input_bytes",
    "read_input_head",
    "split_lines",
]

#: Largest input file accepted. 10^6 manifest lines are about 65 MB; far larger is a mistake
#: (a wrong file) and would only exhaust memory on a login node.
MAX_INPUT_BYTES = 512 * 1024 * 1024

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_EXCERPT_CHARS = 60
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_LINE_WITH_END = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
#: Bytes read at a time by :func:`iter_input_lines`: memory stays at a few of these, whatever
#: the file's size (a 600,000-line manifest is ~40 MB; issue 13).
_CHUNK_BYTES = 1 << 20


def read_input_bytes(path: Path) -> bytes:
    """Read a whole user input file, turning every OS failure into an InputError naming it."""
    source = str(path)
    try:
        _check_input_file(path, source)
        return path.read_bytes()
    except OSError as exc:
        raise _os_error(exc, source) from None


def _check_input_file(path: Path, source: str) -> None:
    size = path.stat().st_size
    if path.is_dir():
        raise InputError("is a directory, not a file", source=source)
    if size > MAX_INPUT_BYTES:
        raise InputError(
            f"file is {size} bytes; inputs larger than {MAX_INPUT_BYTES} bytes are refused "
            "(is this the right file?)",
            source=source,
        )


def _os_error(exc: OSError, source: str) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError("file not found", source=source)
    if isinstance(exc, PermissionError):
        return InputError("permission denied reading the file", source=source)
    return InputError(f"cannot read the file: {exc.strerror or exc}", source=source)


def iter_input_lines(path: Path, *, source: str | None = None) -> Iterator[str]:
    """The file's lines, line breaks kept, read and decoded a chunk at a time.

    The same rules and messages as :func:`read_input_bytes` + :func:`decode_input` (zip, DICOM,
    NUL and bad UTF-8 refused with byte offset and line), but without holding the file: a
    manifest of 600,000 UIDs would otherwise cost its bytes, its text and a list of 600,000
    line strings at once (issue 13). Errors surface as the offending chunk is reached, so a
    caller that must refuse bad input up front reads to the end once before acting. UTF-16
    (BOM-marked) files are decoded whole: only PowerShell writes them, and never this large.
    """
    name = source if source is not None else str(path)
    try:
        _check_input_file(path, name)
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below; OSError mapped
    except OSError as exc:
        raise _os_error(exc, name) from None
    with handle:
        try:
            head = handle.read(_CHUNK_BYTES)
            if head.startswith(_UTF16_BOMS):
                yield from iter_lines(decode_input(head + handle.read(), source=name))
                return
            _refuse_binary(head, name)
            yield from _utf8_lines(handle, head, name)
        except OSError as exc:
            raise _os_error(exc, name) from None


def _utf8_lines(handle: io.BufferedReader, head: bytes, source: str) -> Iterator[str]:
    """Decode UTF-8 pieces cut after a line break (never inside a character or a CRLF)."""
    skipped = len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0
    pending = head[skipped:]
    offset = skipped  # byte offset of ``pending`` in the file
    newlines = 0  # LFs before ``pending``: line numbers counted as decode_input counts them
    eof = False
    while True:
        cut = len(pending) if eof else _safe_cut(pending)
        if cut == 0:
            if eof:
                return
            more = handle.read(_CHUNK_BYTES)
            eof = not more
            pending += more
            continue
        piece = pending[:cut]
        nul = piece.find(b"\x00")
        if nul != -1:
            raise InputError(
                f"NUL byte at byte offset {offset + nul}: this looks like a binary file, not text",
                source=source,
                location=str(newlines + piece.count(b"\n", 0, nul) + 1),
            )
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"not UTF-8 text: byte 0x{piece[exc.start]:02x} at byte offset {offset + exc.start} "
                "cannot be decoded (save the file as UTF-8)",
                source=source,
                location=str(newlines + piece.count(b"\n", 0, exc.start) + 1),
            ) from None
        yield from iter_lines(text)
        newlines += piece.count(b"\n")
        offset += cut
        pending = pending[cut:]


def _safe_cut(pending: bytes) -> int:
    """Length of the longest prefix of ``pending`` that ends a line for sure (0: none yet).

    After the last LF; failing that, after the last CR that is not the final byte (a CR at the
    end might be the first half of a CRLF whose LF is in the next chunk).
    """
    cut = pending.rfind(b"\n") + 1
    if cut == 0:
        cut = pending.rfind(b"\r", 0, len(pending) - 1) + 1
    return cut


def read_input_head(path: Path, *, chars: int, source: str | None = None) -> str:
    """The first ``chars`` characters of a user file (whole lines), for recognising its kind."""
    taken: list[str] = []
    count = 0
    for line in iter_input_lines(path, source=source):
        taken.append(line)
        count += len(line)
        if count >= chars:
            break
    return "".join(taken)[:chars]


def iter_lines(text: str) -> Iterator[str]:
    """Lines of ``text`` with their breaks kept (LF, CRLF or lone CR only), one at a time.

    ``str.splitlines`` is C-fast but also breaks at form feeds, ``\\x1c``-``\\x1e``, NEL and
    the Unicode separators; it is used when none of those occur, the regular expression else.
    """
    if _OTHER_BREAKS.search(text) is None:
        yield from text.splitlines(keepends=True)
        return
    for match in _LINE_WITH_END.finditer(text):
        yield match.group()


def decode_input(data: bytes, *, source: str) -> str:
    """Decode a user file to text, or raise InputError saying where and why it is not text.

    Accepts UTF-8 (a leading byte-order mark is removed) and BOM-marked UTF-16. The result
    never contains a BOM at its start, so callers can compare the first line directly.
    """
    _refuse_binary(data, source)
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


def _refuse_binary(data: bytes, source: str) -> None:
    """A zip archive or a DICOM file given where a list was expected: say what it is."""
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        raise InputError("this is a zip archive, not a text list of series", source=source)
    if data[128:132] == b"DICM":
        raise InputError("this is a DICOM file, not a text list of series", source=source)


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
