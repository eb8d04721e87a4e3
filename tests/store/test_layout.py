"""Layouts: presets reproduce Data Retriever's real paths; hostile values never escape the root."""

from __future__ import annotations

import datetime
import os
import unicodedata
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcia_fetch.errors import InputError
from tcia_fetch.store.layout import MAX_COMPONENT_BYTES, parse_layout, render_series_path, sanitize_component

LIDC_ROW = {
    "Collection": "LIDC-IDRI",
    "PatientID": "LIDC-IDRI-0001",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178",
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192",
    "StudyDate": "01-01-2000",
    "StudyID": "NA",
    "StudyDesc": "NA",
    "SeriesNumber": "3000566.000000",
    "SeriesDescription": "NA",
}
HNSCC_PET_ROW = {
    "Collection": "HNSCC",
    "PatientID": "HNSCC-01-0001",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1706.8040.233510441938368266923995259359",
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1706.8040.108176347624128373213209352932",
    "StudyDate": datetime.date(1998, 12, 1),
    "StudyID": "NA",
    "StudyDesc": "PETCT HEAD  NECK CA",
    "SeriesNumber": 5,
    "SeriesDescription": "PET NO AC",
}
HNSCC_RT_ROW = {
    "Collection": "HNSCC",
    "PatientID": "HNSCC-01-0001",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1706.8040.141473127645431244275904143582",
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1706.8040.302447225376578447478117028768",
    "StudyDate": "12-05-1998",
    "StudyID": "NA",
    "StudyDesc": "RT SIMULATION",
    "SeriesNumber": None,
    "SeriesDescription": "NA",
}


def test_classic_is_collection_patient_study_series() -> None:
    path = render_series_path("classic", LIDC_ROW)
    assert path == PurePosixPath(
        "LIDC-IDRI/LIDC-IDRI-0001/1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178/"
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (LIDC_ROW, "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192"),
        (
            HNSCC_PET_ROW,
            "HNSCC/HNSCC-01-0001/12-01-1998-NA-PETCT HEAD  NECK CA-59359/5.000000-PET NO AC-52932",
        ),
        (HNSCC_RT_ROW, "HNSCC/HNSCC-01-0001/12-05-1998-NA-RT SIMULATION-43582/NA-28768"),
    ],
    ids=["lidc", "hnscc-pet-date-object-int-series-number", "no-series-number"],
)
def test_descriptive_matches_data_retriever_real_paths(row: dict[str, object], expected: str) -> None:
    assert render_series_path("descriptive", row) == PurePosixPath(expected)


def test_descriptive_leaves_out_null_parts_with_their_dash() -> None:
    row = dict(
        LIDC_ROW, StudyDate=None, StudyID="", StudyDesc="null", SeriesNumber="null", SeriesDescription="/"
    )
    path = render_series_path("descriptive", row)
    assert path.parts[2:] == ("30178", "03192")


def test_descriptive_descriptions_slash_becomes_dash_and_cut_to_53() -> None:
    long_description = "T1/T2 " + "x" * 100
    row = dict(LIDC_ROW, SeriesDescription=long_description, SeriesNumber="2")
    series_dir = render_series_path("descriptive", row).name
    assert series_dir == "2.000000-" + ("T1-T2 " + "x" * 100)[:53] + "-03192"


def test_flat_is_the_series_uid_alone() -> None:
    assert render_series_path("flat", LIDC_ROW) == PurePosixPath(LIDC_ROW["SeriesInstanceUID"])


def test_custom_template_mixes_literals_and_fields_and_missing_is_na() -> None:
    path = render_series_path("{Collection}/{Modality}_series/{SeriesInstanceUID}", LIDC_ROW)
    assert path == PurePosixPath("LIDC-IDRI", "NA_series", LIDC_ROW["SeriesInstanceUID"])


def test_custom_template_renders_dates_like_the_server() -> None:
    from_date = render_series_path(
        "{StudyDate}/{SeriesInstanceUID}", dict(LIDC_ROW, StudyDate=datetime.date(2000, 1, 1))
    )
    from_text = render_series_path("{StudyDate}/{SeriesInstanceUID}", LIDC_ROW)
    assert from_date == from_text


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("clasic", "unknown layout"),
        ("", "empty"),
        ("{Collection}/{PatientID}", "SeriesInstanceUID"),
        ("{Collection/{SeriesInstanceUID}", "brace"),
        ("{Collection}}/{SeriesInstanceUID}", "brace"),
        ("{1abc}/{SeriesInstanceUID}", "brace"),
        ("/abs/{SeriesInstanceUID}", "relative"),
        ("{Collection}//{SeriesInstanceUID}", "empty component"),
        ("../{SeriesInstanceUID}", "not allowed"),
        ("a\\b/{SeriesInstanceUID}", "backslash"),
    ],
)
def test_bad_templates_are_refused_with_a_clear_message(template: str, fragment: str) -> None:
    with pytest.raises(InputError, match="layout") as caught:
        parse_layout(template)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        ("../../etc", "_._.._etc"),
        ("..", "__"),
        (".", "_"),
        (".hidden", "_hidden"),
        ("/etc/passwd", "_etc_passwd"),
        ("C:\\x", "C__x"),
        ("a\x00b\nc", "a_b_c"),
        ("trailing. ", "trailing__"),
        ("CON", "_CON"),
        ("com1.txt", "_com1.txt"),
        ("\u202egnp.exe", "_gnp.exe"),
        ("", "NA"),
    ],
)
def test_hostile_components_are_neutralised(hostile: str, expected: str) -> None:
    assert sanitize_component(hostile) == expected


def test_long_components_are_cut_with_a_stable_hash_suffix() -> None:
    first = sanitize_component("é" * 300)
    second = sanitize_component("é" * 299 + "e")
    assert len(first.encode()) <= MAX_COMPONENT_BYTES
    assert first != second
    assert first == sanitize_component("é" * 300)


def _is_safe_component(part: str) -> bool:
    encoded = part.encode("utf-8")  # strict: no lone surrogates
    return (
        0 < len(encoded) <= MAX_COMPONENT_BYTES
        and part not in {".", ".."}
        and not part.startswith(".")
        and not part.endswith((".", " "))
        and not any(char in part for char in "/\\\x00")
        and not any(unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for char in part)
    )


hostile_text = st.one_of(
    st.none(),
    st.text(max_size=400),
    st.sampled_from(
        ["..", ".", "../..", "/", "//x", "\\\\host\\share", "CON", "nul.txt", " ", "null", "-", "a/../b"]
    ),
    st.integers(),
    st.floats(allow_nan=True),
    st.dates(),
)
FIELDS = [
    "Collection",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDate",
    "StudyID",
    "StudyDesc",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
]


@settings(max_examples=300, deadline=None)
@given(
    row=st.fixed_dictionaries({}, optional={field: hostile_text for field in FIELDS}),
    layout=st.sampled_from(
        ["classic", "descriptive", "flat", "{Collection}.{Modality}/x{SeriesDescription}/{SeriesInstanceUID}"]
    ),
)
def test_any_row_renders_to_a_path_inside_the_root(row: dict[str, object], layout: str) -> None:
    path = render_series_path(layout, row)
    assert not path.is_absolute()
    assert all(_is_safe_component(part) for part in path.parts), path.parts
    root = "/srv/dest"
    assert os.path.normpath(os.path.join(root, *path.parts)).startswith(root + "/")
    assert render_series_path(layout, row) == path


def test_series_number_renders_the_same_from_every_endpoint() -> None:
    template = "{SeriesNumber}/{SeriesInstanceUID}"
    rendered = {
        render_series_path(template, dict(LIDC_ROW, SeriesNumber=number)).parts[0]
        for number in (2, 2.0, "2", "2.000000")
    }
    assert rendered == {"2.000000"}
    assert render_series_path(template, dict(LIDC_ROW, SeriesNumber="A12")).parts[0] == "A12"


def test_the_fast_path_alphabet_holds_only_characters_the_rules_keep() -> None:
    # sanitize_component skips the per-character rules for names made of these characters only.
    from tcia_fetch.store import layout

    plain = [chr(code) for code in range(0x110000) if layout._PLAIN_CHARACTERS.fullmatch(chr(code))]
    assert len(plain) == 26 * 2 + 10 + len(" _.,+()-")
    for char in plain:
        assert char not in "/\\" and char not in layout._WINDOWS_FORBIDDEN
        assert unicodedata.category(char) not in layout._UNSAFE_CATEGORIES
    assert sanitize_component("1.3.6.1.4.1.14519.5.2.1.6279.6001.1") == "1.3.6.1.4.1.14519.5.2.1.6279.6001.1"
    assert sanitize_component(".hidden.") == "_hidden_"  # the rules after the characters still apply
    assert sanitize_component("con") == "_con"
