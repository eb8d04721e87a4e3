"""The --where language: semantics, errors with positions, robustness."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcia_fetch.api.where import parse_where
from tcia_fetch.errors import InputError

ROWS: list[dict[str, object]] = [
    {
        "SeriesInstanceUID": "1.1",
        "Modality": "CT",
        "ImageCount": 48,
        "SeriesNumber": "500.000000",
        "StudyDate": "01-06-2018",
        "SeriesDescription": "Chest CT, Gated",
    },
    {
        "SeriesInstanceUID": "1.2",
        "Modality": "MR",
        "ImageCount": 120,
        "SeriesNumber": "2",
        "StudyDate": "12-31-2019",
        "SeriesDescription": "AX T1",
    },
    {"SeriesInstanceUID": "1.3", "Modality": "CT", "ImageCount": "250", "StudyDate": "2003-12-12 00:00:00.0"},
]
KEYS = {"SeriesInstanceUID", "Modality", "ImageCount", "SeriesNumber", "StudyDate", "SeriesDescription"}


def uids(expression: str) -> list[str]:
    predicate = parse_where(expression, known_keys=KEYS)
    return [str(row["SeriesInstanceUID"]) for row in ROWS if predicate.matches(row)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("ImageCount>50 and ImageCount<200", ["1.2"]),
        ("ImageCount >= 48", ["1.1", "1.2", "1.3"]),
        ("Modality = CT", ["1.1", "1.3"]),
        ("Modality == 'MR'", ["1.2"]),
        ("Modality != CT", ["1.2"]),
        ("not Modality=CT", ["1.2"]),
        ("Modality=CT and (ImageCount<50 or ImageCount>200)", ["1.1", "1.3"]),
        ("Modality=CT AND NOT ImageCount<100", ["1.3"]),
        ("SeriesNumber = 500", ["1.1"]),
        ("SeriesNumber > 1", ["1.1", "1.2"]),
        ("SeriesDescription ~ '^AX'", ["1.2"]),
        ("SeriesDescription contains 'chest ct'", ["1.1"]),
        ("SeriesDescription contains gated", ["1.1"]),
        ("StudyDate > 01-01-2018", ["1.1", "1.2"]),
        ("StudyDate < 2010-01-01", ["1.3"]),
        ("StudyDate >= 12-31-2019", ["1.2"]),
        ("SeriesNumber != 2", ["1.1"]),
        ("`Modality`=MR", ["1.2"]),
    ],
)
def test_semantics(expression: str, expected: list[str]) -> None:
    assert uids(expression) == expected


@pytest.mark.parametrize(
    ("expression", "column", "fragment"),
    [
        ("ImageCont>5", 1, "unknown key 'ImageCont'"),
        ("ImageCount>", 12, "expected a value"),
        ("ImageCount 5", 12, "expected an operator"),
        ("(Modality=CT", 13, "expected ')'"),
        ("Modality=CT or", 15, "expected a column name"),
        ("Modality=CT Modality=MR", 13, "unexpected"),
        ("Modality ~ '('", 12, "bad regular expression"),
        ("Modality = 'CT", 12, "unterminated"),
        ("Modality = C;T", 13, "unexpected character"),
        ("", 1, "empty expression"),
    ],
)
def test_errors_show_the_position(expression: str, column: int, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_where(expression, known_keys=KEYS)
    message = str(caught.value)
    assert message.startswith(f"--where: col {column}: ")
    assert fragment in message
    assert "\n" not in message


def test_case_hint_for_unknown_key() -> None:
    with pytest.raises(InputError, match="did you mean 'Modality'"):
        parse_where("modality=CT", known_keys=KEYS)


def test_without_known_keys_any_key_parses_and_missing_keys_never_match() -> None:
    predicate = parse_where("Foo = 1 or Foo != 1")
    assert not predicate.matches({"Bar": 1})
    assert predicate.keys == frozenset({"Foo"})


@given(st.text(max_size=60))
def test_parser_only_ever_raises_input_error(text: str) -> None:
    try:
        predicate = parse_where(text)
    except InputError:
        return
    for row in ROWS:
        assert predicate.matches(row) in (True, False)
