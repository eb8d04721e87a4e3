"""Server text on the way to the user's terminal: secrets scrubbed, controls shown, no markup.

Everything the CLI prints that may quote the server (names, descriptions, error messages,
failure reasons, report contents) goes through here:

* :func:`shown` scrubs every registered credential (:mod:`tcia_fetch.redaction`, the last line of
  defence) and turns control characters into visible escapes (:func:`tcia_fetch.untrusted.printable`);
* :func:`cell` does the same and wraps the result in a ``rich.text.Text``, which rich never
  parses as markup: a collection named ``[link=http://evil]click[/link]`` prints as written;
* :func:`json_text` dumps JSON for a terminal: ``json`` already escapes C0 controls, this also
  escapes C1, DEL and bidi characters (as ``\\u`` escapes, so the JSON means the same).

Rich markup of our own (``[red]failed[/red]``) is printed separately from server text, which is
always printed with ``markup=False`` or as ``Text``.
"""

from __future__ import annotations

import json
from typing import Final

from rich.text import Text

from tcia_fetch.redaction import scrub
from tcia_fetch.untrusted import printable

__all__ = ["cell", "json_text", "shown"]

_JSON_ESCAPES: Final = {
    code: f"\\u{code:04x}"
    for code in (
        0x7F,
        *range(0x80, 0xA0),
        0x061C,
        *range(0x200B, 0x2010),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        0xFEFF,
    )
}


def shown(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text safe to print: credentials scrubbed, controls as visible escapes."""
    return printable(scrub(str(value)), keep_newlines=keep_newlines)


def cell(value: object) -> Text:
    """A table cell for server text: :func:`shown`, and never interpreted as rich markup."""
    return Text(shown(value))


def json_text(document: object, *, indent: int | None = 2) -> str:
    """``json.dumps`` for a terminal: non-ASCII kept readable, every control or bidi char escaped.

    The characters escaped here can only occur inside JSON strings, where ``\\uXXXX`` means the
    same character: the output parses to exactly the same data.
    """
    text = json.dumps(document, indent=indent, ensure_ascii=False)
    return scrub(text).translate(_JSON_ESCAPES)
