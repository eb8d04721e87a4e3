"""Property tests for the three parsers: no crash, only valid UIDs, located errors, stable de-dup.

Each property is built by a factory taking the example count, so the default suite runs a
modest 200 examples and the ``slow`` campaign runs ``TCIA_FETCH_FUZZ_EXAMPLES`` of each (read
when the campaign test runs, not at import).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tcia_fetch.errors import InputError
from tcia_fetch.job.csvlist import UidTable, parse_uid_table, parse_uid_table_bytes
from tcia_fetch.job.jobfile import parse_job_mapping, parse_job_toml
from tcia_fetch.job.manifest import Manifest, parse_manifest, parse_manifest_bytes
from tcia_fetch.uid import is_valid_uid

DEFAULT_EXAMPLES = 200
SOURCE = "fuzz/in.tcia"

valid_uids = st.from_regex(r"(0|[1-9][0-9]{0,6})(\.(0|[1-9][0-9]{0,6})){1,8}", fullmatch=True).filter(
    lambda uid: len(uid) <= 64
)
junk_lines = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "Series ID",
            "SeriesInstanceUID",
            "ListOfSeriesToDownload=",
            "manifestVersion=3.0",
            "# comment",
            "1.2..3",
            "1.02.3",
            "1" * 70,
            "1.2.3 4.5.6",
            '"1.2.3"',
            "\ufeff1.2.3",
            "1.2.3,,, ",
            "\x00",
            "\x1b[2J",
        ]
    ),
)
line_endings = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def manifest_like_text(draw: st.DrawFn) -> str:
    header = draw(
        st.lists(st.sampled_from(["downloadServerUrl=https://h/x", "noOfrRetry=4", "a:b", ""]), max_size=4)
    )
    marker = draw(
        st.sampled_from(
            ["ListOfSeriesToDownload=", " listofseriestodownload = ", "", "\ufeffListOfSeriesToDownload="]
        )
    )
    body = draw(
        st.lists(st.one_of(valid_uids, junk_lines, valid_uids.map(lambda u: f"  {u} ,")), max_size=30)
    )
    ending = draw(line_endings)
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return bom + ending.join([*header, marker, *body]) + draw(st.sampled_from(["", ending]))


def check_uid_list(parsed: Manifest | UidTable, text_lines: int) -> None:
    assert all(is_valid_uid(uid) for uid in parsed.uids)
    assert len(set(parsed.uids)) == len(parsed.uids) == len(parsed.uid_lines)
    assert list(parsed.uid_lines) == sorted(set(parsed.uid_lines))
    assert all(1 <= line <= text_lines + 1 for line in parsed.uid_lines)
    assert parsed.problem_count >= len(parsed.problems)
    assert all(problem.source == parsed.source for problem in parsed.problems)
    assert all(problem.text.isprintable() for problem in parsed.problems)


def check_rejection(error: InputError, source: str) -> None:
    assert error.source == source
    assert str(error).startswith(source + ":")
    if error.location is not None and error.location.isdigit():
        assert int(error.location) >= 1


def check_manifest_text(text: str) -> None:
    lines = text.count("\n") + text.count("\r") + 1
    try:
        lenient = parse_manifest(text, source=SOURCE, strict=False)
    except InputError as error:
        check_rejection(error, SOURCE)
        with pytest.raises(InputError):
            parse_manifest(text, source=SOURCE, strict=True)
        return
    check_uid_list(lenient, lines)
    if lenient.problem_count == 0:
        assert parse_manifest(text, source=SOURCE) == lenient
    else:
        with pytest.raises(InputError) as caught:
            parse_manifest(text, source=SOURCE)
        check_rejection(caught.value, SOURCE)
    # De-duplication is idempotent: writing the result back out and reading it gives the same list,
    # and repeating the whole list only adds duplicates.
    rewritten = "ListOfSeriesToDownload=\n" + "\n".join(lenient.uids + lenient.uids) + "\n"
    again = parse_manifest(rewritten, source=SOURCE)
    assert again.uids == lenient.uids
    assert again.duplicates == len(lenient.uids)
    assert again.problem_count == 0


def manifest_text_property(examples: int) -> Callable[[], None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=st.one_of(manifest_like_text(), st.text()))
    def run(text: str) -> None:
        check_manifest_text(text)

    return run


def manifest_model_property(examples: int) -> Callable[[], None]:
    """Against a model: with known valid and junk lines, the result is exactly predictable."""

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        lines=st.lists(
            st.one_of(
                st.tuples(st.just(True), st.sampled_from(["1.2.3", "2.25.7", "1.3.6.1.4.1.14519.5"])),
                st.tuples(st.just(True), valid_uids),
                st.tuples(st.just(False), st.sampled_from(["abc", "1.02", "x=y", "1..2", "-1.2"])),
            ),
            max_size=40,
        )
    )
    def run(lines: list[tuple[bool, str]]) -> None:
        text = "manifestVersion=3.0\nListOfSeriesToDownload=\n" + "".join(f"{uid}\n" for _, uid in lines)
        valid = [uid for ok, uid in lines if ok]
        junk = [index + 3 for index, (ok, _) in enumerate(lines) if not ok]
        expected = tuple(dict.fromkeys(valid))
        if not expected:
            with pytest.raises(InputError):
                parse_manifest(text, source=SOURCE, strict=False)
            return
        parsed = parse_manifest(text, source=SOURCE, strict=False)
        assert parsed.uids == expected
        assert parsed.duplicates == len(valid) - len(expected)
        assert [problem.line for problem in parsed.problems] == junk

    return run


def manifest_bytes_property(examples: int) -> Callable[[], None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.one_of(
            st.binary(max_size=400),
            manifest_like_text().map(lambda text: text.encode("utf-8")),
            st.tuples(manifest_like_text(), st.binary(max_size=8), st.integers(0, 400)).map(
                lambda parts: parts[0].encode()[: parts[2]] + parts[1] + parts[0].encode()[parts[2] :]
            ),
        )
    )
    def run(data: bytes) -> None:
        try:
            parsed = parse_manifest_bytes(data, source=SOURCE, strict=False)
        except InputError as error:
            check_rejection(error, SOURCE)
            return
        check_uid_list(parsed, data.count(b"\n") + data.count(b"\r") + 1)

    return run


@st.composite
def table_like_text(draw: st.DrawFn) -> str:
    delimiter = draw(st.sampled_from([",", "\t", ";"]))
    uid_header = draw(
        st.sampled_from(["SeriesInstanceUID", "Series UID", "series instance uid", "Study UID"])
    )
    columns = draw(
        st.lists(st.sampled_from(["PatientID", "Modality", "Desc", uid_header]), min_size=1, max_size=4)
    )
    cell = st.one_of(valid_uids, junk_lines, st.just(""), valid_uids.map(lambda uid: f'"{uid}"'))
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=len(columns) + 1), max_size=20))
    ending = draw(line_endings)
    return ending.join(delimiter.join(row) for row in [columns, *rows])


def table_property(examples: int) -> Callable[[], None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=st.one_of(table_like_text(), st.text()))
    @example(text="SeriesInstanceUID\n0.0\t")  # a blank after the UID is not part of its row's UID
    def run(text: str) -> None:
        try:
            parsed = parse_uid_table(text, source="fuzz/t.csv", strict=False)
        except InputError as error:
            check_rejection(error, "fuzz/t.csv")
            return
        check_uid_list(parsed, text.count("\n") + text.count("\r") + 1)
        for uid in parsed.uids:
            assert parsed.row_for(uid)[parsed.uid_column] == uid
        rewritten = "SeriesInstanceUID\n" + "\n".join(parsed.uids * 2)
        again = parse_uid_table(rewritten, source="t")
        assert again.uids == parsed.uids
        assert again.duplicates == len(parsed.uids)

    return run


def table_bytes_property(examples: int) -> Callable[[], None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.one_of(st.binary(max_size=300), table_like_text().map(lambda t: t.encode("utf-8"))))
    def run(data: bytes) -> None:
        try:
            parse_uid_table_bytes(data, source="fuzz/t.csv", strict=True)
        except InputError as error:
            check_rejection(error, "fuzz/t.csv")

    return run


JOB_KEYS = [
    "server",
    "output",
    "download",
    "verify",
    "query",
    "series",
    "base_url",
    "dest",
    "layout",
    "keep",
    "new_file_names",
    "metadata_csv",
    "concurrency",
    "max_requests_per_s",
    "max_bytes_per_s",
    "attempts",
    "integrity_attempts",
    "stall_timeout_s",
    "first_byte_timeout_s",
    "connect_timeout_s",
    "md5",
    "collection",
    "patient_id",
    "study_uid",
    "modality",
    "body_part",
    "manufacturer",
    "model",
    "image_count",
    "series_date",
    "description",
    "min",
    "max",
    "from",
    "to",
    "uids",
    "manifests",
    "tables",
]
toml_scalars = st.one_of(
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["classic", "{SeriesInstanceUID}", "dicom", "1.2.3", "2001-01-01", "(", "http://h/"]),
    st.dates(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(JOB_KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)


def job_mapping_property(examples: int, base_dir: Path) -> Callable[[], None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.dictionaries(st.sampled_from(JOB_KEYS), toml_values, max_size=6))
    def run(data: dict[str, Any]) -> None:
        try:
            spec = parse_job_mapping(data, source="fuzz/job.toml", base_dir=base_dir)
        except InputError as error:
            check_rejection(error, "fuzz/job.toml")
            return
        assert spec.queries or spec.explicit_uids
        for query in spec.queries:
            assert query.server_filter_sets()
            query.describe()
            query.accepts(None, None, None)

    return run


def job_text_property(examples: int, base_dir: Path) -> Callable[[], None]:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        text=st.one_of(
            st.text(),
            st.lists(
                st.sampled_from(
                    [
                        "[download]",
                        "[[query]]",
                        "[series]",
                        "[output]",
                        'collection = "A"',
                        "attempts = 3",
                        "attempts = -1",
                        'uids = ["1.2.3"]',
                        "concurrency = [",
                        'layout = "{x}"',
                        "x = 1",
                        "image_count = { min = 3 }",
                        "= 4",
                        "[[query]",
                        'description = "("',
                    ]
                ),
                max_size=8,
            ).map("\n".join),
        )
    )
    def run(text: str) -> None:
        try:
            parse_job_toml(text, source="fuzz/job.toml", base_dir=base_dir)
        except InputError as error:
            check_rejection(error, "fuzz/job.toml")

    return run


def test_manifest_text_properties() -> None:
    manifest_text_property(DEFAULT_EXAMPLES)()


def test_manifest_matches_model() -> None:
    manifest_model_property(DEFAULT_EXAMPLES)()


def test_manifest_bytes_never_crash() -> None:
    manifest_bytes_property(DEFAULT_EXAMPLES)()


def test_table_text_properties() -> None:
    table_property(DEFAULT_EXAMPLES)()


def test_table_bytes_never_crash() -> None:
    table_bytes_property(DEFAULT_EXAMPLES)()


def test_job_mapping_errors_are_input_errors(tmp_path: Path) -> None:
    job_mapping_property(DEFAULT_EXAMPLES, tmp_path)()


def test_job_text_errors_are_input_errors(tmp_path: Path) -> None:
    job_text_property(DEFAULT_EXAMPLES, tmp_path)()


#: Examples per property in the campaign when TCIA_FETCH_FUZZ_EXAMPLES is not set (the CI size).
#: Small on purpose: every property already runs DEFAULT_EXAMPLES examples in its own test above,
#: so in CI the campaign only proves it runs; its value is the large run (e.g. 100000) by hand.
CAMPAIGN_DEFAULT_EXAMPLES = 40


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_fuzz_campaign(tmp_path: Path) -> None:
    """The big campaign: ``TCIA_FETCH_FUZZ_EXAMPLES`` examples per property (e.g. 100000)."""
    examples = int(os.environ.get("TCIA_FETCH_FUZZ_EXAMPLES", str(CAMPAIGN_DEFAULT_EXAMPLES)))
    for factory in (
        manifest_text_property,
        manifest_model_property,
        manifest_bytes_property,
        table_property,
        table_bytes_property,
    ):
        factory(examples)()
    job_mapping_property(examples, tmp_path)()
    job_text_property(examples, tmp_path)()
