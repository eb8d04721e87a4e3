"""Server text made harmless where it is shown: on a terminal and in a spreadsheet (sans-I/O).

The server is untrusted, and its text reaches two interpreters that act on what they read:

* **A terminal** runs escape sequences: ANSI/CSI (``ESC [``) recolours, moves the cursor or
  clears the screen, OSC (``ESC ]``) sets the window title or plants a hyperlink, BEL rings,
  and 8-bit C1 controls (``U+009B`` is CSI on some terminals) do the same without an ESC. Bidi
  overrides (``U+202E``) make ``exe.txt`` display as ``txt.exe``. :func:`printable` turns every
  such character into a visible escape (``\\x1b``, ``\\u202e``), so the user *sees* what the
  server sent instead of having their terminal act on it.
* **A spreadsheet** evaluates a cell that begins with ``=``, ``+``, ``-`` or ``@`` (and, in some
  programs, a tab or CR before one) as a formula: ``=HYPERLINK(...)`` or a DDE payload in a series
  description would run when a user opens ``metadata.csv``. :func:`spreadsheet_cell` prefixes such
  a cell with ``'``, the escape spreadsheets themselves use for "this is text" (OWASP's advice).
  A cell that is a plain number (``-5``, ``+1.5e3``) is left alone: it cannot be a formula, and a
  legitimately negative number should stay a number.

Rich markup (``[link=...]``) is the CLI's business: it renders server text with markup off or
as ``rich.text.Text`` (cli/_show.py).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["FORMULA_TRIGGERS", "printable", "spreadsheet_cell"]

#: First characters that make a spreadsheet treat a cell as a formula (or strip into one).
FORMULA_TRIGGERS: Final = frozenset("=+-@\t\r")

_BIDI_AND_INVISIBLE: Final = (
    "\u061c",  # Arabic letter mark
    "\u200b\u200c\u200d\u200e\u200f",  # zero-width space/joiners, LRM, RLM
    "\u2028\u2029",  # line and paragraph separators
    "\u202a\u202b\u202c\u202d\u202e",  # LRE, RLE, PDF, LRO, RLO
    "\u2066\u2067\u2068\u2069",  # LRI, RLI, FSI, PDI
    "\ufeff",  # zero-width no-break space
)


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _table(*, keep_newlines: bool) -> dict[int, str]:
    codes = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
    codes += [ord(char) for group in _BIDI_AND_INVISIBLE for char in group]
    table = {code: _escape(code) for code in codes}
    if keep_newlines:
        del table[ord("\n")], table[ord("\t")]
    return table


_ONE_LINE: Final = _table(keep_newlines=False)
_MULTI_LINE: Final = _table(keep_newlines=True)
_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control, bidi and invisible formatting character shown as an escape.

    Nothing a terminal could act on survives: C0 controls (ESC, BEL, CR, backspace, ...), DEL,
    C1 controls, bidi embeddings/overrides/isolates, zero-width characters. A backslash is kept
    as is (the escapes are for reading, not for decoding). ``keep_newlines`` keeps ``\\n`` and
    ``\\t`` for multi-line messages of our own that quote the server.
    """
    return text.translate(_MULTI_LINE if keep_newlines else _ONE_LINE)


def spreadsheet_cell(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet will evaluate: a leading ``'`` before a formula.

    Applies to text that came from the server. Idempotent (a prefixed cell starts with ``'``), and
    a plain number is returned unchanged.
    """
    if text and text[0] in FORMULA_TRIGGERS and not _NUMBER.fullmatch(text):
        return "'" + text
    return text
