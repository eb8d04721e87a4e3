"""Server text shown on a terminal or opened in a spreadsheet does nothing but read."""

from __future__ import annotations

import pytest

from tcia_fetch.testing._faults import HOSTILE_TEXT
from tcia_fetch.untrusted import printable, spreadsheet_cell


def test_printable_shows_every_control_as_a_visible_escape() -> None:
    shown = printable(HOSTILE_TEXT)
    for char in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert char not in shown
    assert "\\x1b[2J" in shown and "\\x07" in shown and "\\x9b" in shown and "\\u202e" in shown
    assert shown.isprintable()


@pytest.mark.parametrize(
    "char", ["\x00", "\x08", "\r", "\x7f", "\x85", "\u200b", "\u2066", "\u2028", "\ufeff"]
)
def test_printable_escapes_c0_c1_bidi_and_invisible_characters(char: str) -> None:
    assert char not in printable(f"a{char}b")


def test_printable_keeps_ordinary_text_and_optionally_newlines() -> None:
    assert printable("Lung CT — Ünïcode 肺 [x] \\") == "Lung CT — Ünïcode 肺 [x] \\"
    assert printable("one\ntwo\tthree") == "one\\x0atwo\\x09three"
    assert printable("one\ntwo\tthree\x1b", keep_newlines=True) == "one\ntwo\tthree\\x1b"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-5", "-5"),  # a negative number stays a number
        ("+1.5e3", "+1.5e3"),
        ("CT CHEST", "CT CHEST"),
        ("a=b", "a=b"),
        ("", ""),
        ("'=already", "'=already"),
    ],
)
def test_spreadsheet_cell_defuses_formulas_only(cell: str, expected: str) -> None:
    assert spreadsheet_cell(cell) == expected
    assert spreadsheet_cell(spreadsheet_cell(cell)) == expected  # idempotent
