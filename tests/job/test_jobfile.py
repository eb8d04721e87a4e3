"""Job files: the documented shape loads; every mistake names the file and the key to fix."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from tcia_fetch.errors import InputError
from tcia_fetch.job import (
    DEFAULT_BASE_URL,
    JobSpec,
    SeriesQuery,
    UidOrigin,
    load_job,
    parse_job_toml,
    read_manifest,
)

from .conftest import MANIFEST_DIR

CONFIGS = Path(__file__).parents[2] / "configs"
UID_A = "1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991"
UID_B = "2.25.159938781348401988370074200042204937718"
UID_C = "1.2.840.113654.2.55.1"
SMALL_FIRST = "1.2.246.352.71.2.494841863751.4253616.20190218155318"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def job_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as caught:
        load_job(write(tmp_path / "job.toml", text))
    assert caught.value.exit_code == 2
    return str(caught.value).replace(str(tmp_path) + "/", "")


def query(text: str) -> SeriesQuery:
    spec = parse_job_toml(f"[[query]]\n{text}\n", source="job.toml", base_dir=Path("."))
    return spec.queries[0]


def test_example_job_file_loads_with_its_lists(tmp_path: Path) -> None:
    job = tmp_path / "example-job.toml"
    shutil.copy(CONFIGS / "example-job.toml", job)
    shutil.copy(
        MANIFEST_DIR / "small_manifest.tcia", write(tmp_path / "lists" / "x", "").parent / "extra.tcia"
    )
    write(tmp_path / "lists" / "extra.csv", f"SeriesInstanceUID,Note\n{UID_C},x\n{SMALL_FIRST},dup\n")
    spec = load_job(job)
    assert spec.source == job
    assert spec.server.base_url == DEFAULT_BASE_URL
    assert spec.dest == Path("/data/tcia")
    assert spec.output.layout == "classic"
    assert spec.output.layout_template == "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}"
    assert spec.download.concurrency == 4
    assert spec.download.stall_timeout_s == 120
    assert spec.verify.md5 is True
    assert len(spec.queries) == 2
    assert len(spec.queries[0].server_filter_sets()) == 4
    uids = [origin.uid for origin in spec.explicit_uids]
    assert uids[0] == "1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991"
    assert len(uids) == 1 + 5 + 1 == len(set(uids))
    assert spec.explicit_uids[1] == UidOrigin(SMALL_FIRST, "lists/extra.tcia:7")
    assert spec.explicit_uids[-1] == UidOrigin(UID_C, "lists/extra.csv:2")
    assert spec.duplicates == 1


def test_minimal_job_takes_defaults(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path / "job.toml", '[[query]]\ncollection = "LIDC-IDRI"\n'))
    assert spec.dest is None
    assert spec.download.attempts == 6
    assert spec.download.integrity_attempts == 3
    assert spec.output.keep == "dicom"
    assert spec.output.new_file_names is False
    assert spec.output.metadata_csv is True
    assert spec.explicit_uids == ()
    assert spec.queries[0].server_filter_sets() == [{"collection": "LIDC-IDRI"}]


def test_error_names_file_and_key_path(tmp_path: Path) -> None:
    text = '[[query]]\ncollection = "A"\n\n[[query]]\ncollection = "B"\nimage_count = { min = -3 }\n'
    assert job_error(tmp_path, text).startswith("job.toml: query[1].image_count.min: must be >= 0, got -3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[download]\nconcurency = 8\n",
            "job.toml: download.concurency: unknown key 'concurency'; did you mean 'concurrency'?",
        ),
        ("[downlaod]\n", "job.toml: downlaod: unknown key 'downlaod'; did you mean 'download'?"),
        ('[[query]]\ncollection = "A"\nmodel_name = "X"\n', "job.toml: query[0].model_name: unknown key"),
        (
            '[[query]]\ncollection = "A"\nseries_date = { from = "2001-01-01", until = "2002-01-01" }\n',
            "job.toml: query[0].series_date.until: unknown key 'until'",
        ),
        ('[query]\ncollection = "A"\n', "job.toml: query: must be an array of tables: write [[query]]"),
        (
            '[[query]]\ncollection = "A"\nmodel = "X"\nmanufacturer_model = "Y"\n',
            "job.toml: query[0].manufacturer_model: 'model' and 'manufacturer_model' name the same filter",
        ),
        (
            '[download]\nattempts = "6"\n',
            "job.toml: download.attempts: must be an integer, got the string '6'",
        ),
        ("[download]\nattempts = 0\n", "job.toml: download.attempts: must be >= 1, got 0"),
        ("[download]\nstall_timeout_s = 0\n", "job.toml: download.stall_timeout_s: must be > 0, got 0"),
        ("[verify]\nmd5 = 1\n", "job.toml: verify.md5: must be true or false, got 1"),
        (
            '[output]\nkeep = "tar"\n',
            "job.toml: output.keep: must be 'dicom', 'zip' or 'tar.zst', got the string 'tar'",
        ),
        ("output = 3\n", "job.toml: output: must be a table, got 3"),
        (
            '[server]\nbase_url = "ftp://x/"\n',
            "job.toml: server.base_url: must be an http(s) URL with a host",
        ),
        (
            '[[query]]\ncollection = "A"\ndescription = "(unclosed"\n',
            "job.toml: query[0].description: not a valid regular expression: missing ), "
            "unterminated subpattern",
        ),
        (
            '[[query]]\ncollection = "A"\nseries_date = { from = "2001-02-30" }\n',
            "job.toml: query[0].series_date.from: must be an ISO date YYYY-MM-DD, got '2001-02-30'",
        ),
        (
            '[[query]]\ncollection = "A"\nseries_date = { from = 2010-01-01, to = 2001-01-01 }\n',
            "job.toml: query[0].series_date: from (2010-01-01) is after to (2001-01-01)",
        ),
        (
            '[[query]]\ncollection = "A"\nimage_count = { min = 9, max = 2 }\n',
            "job.toml: query[0].image_count: min (9) is greater than max (2)",
        ),
        (
            '[[query]]\ncollection = "A"\nimage_count = {}\n',
            "job.toml: query[0].image_count: give min, max or both",
        ),
        ("[[query]]\nimage_count = { min = 1 }\n", "job.toml: query[0]: a [[query]] needs at least one of"),
        ("[[query]]\ncollection = []\n", "job.toml: query[0].collection: an empty list matches nothing"),
        (
            '[[query]]\ncollection = ["A", " "]\n',
            "job.toml: query[0].collection: filter values must not be empty",
        ),
        ('[[query]]\ncollection = ["A", 3]\n', "job.toml: query[0].collection[1]: must be a string, got 3"),
        ('[[query]]\nstudy_uid = "1.2.x"\n', "job.toml: query[0].study_uid: '1.2.x' is not a DICOM UID"),
        (
            "[[query]]\n"
            + "patient_id = ["
            + ", ".join(f'"P{i}"' for i in range(200))
            + "]\n"
            + "modality = ["
            + ", ".join(f'"M{i}"' for i in range(60))
            + "]\n",
            "job.toml: query[0]: the filter lists multiply out to 12000 getSeries calls",
        ),
        ('[series]\nuids = "1.2.3"\n', "job.toml: series.uids: must be a list, got the string '1.2.3'"),
        (
            '[series]\nuids = ["1.2.3", "1.02.3"]\n',
            "job.toml: series.uids[1]: '1.02.3' is not a DICOM UID "
            "(a component of more than one digit starts with 0)",
        ),
        ('[series]\nmanifests = ["lists/none.tcia"]\n', "job.toml: series.manifests[0]: file not found: "),
        ('[series]\ntables = ["lists"]\n', "job.toml: series.tables[0]: is a directory, not a file"),
        ("[series]\n", "job.toml: nothing to download"),
        ("", "job.toml: nothing to download"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "lists").mkdir()
    message = job_error(tmp_path, text)
    assert message.startswith(expected), message


def test_unknown_key_lists_the_allowed_keys(tmp_path: Path) -> None:
    message = job_error(tmp_path, '[output]\nformat = "zip"\n')
    assert "allowed here: dest, keep, layout, metadata_csv, new_file_names" in message


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    message = job_error(tmp_path, "[download]\nattempts = -1\nconcurrency = 0\n")
    assert "job.toml: download.attempts: must be >= 1" in message
    assert "job.toml: download.concurrency: must be >= 1" in message


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    message = job_error(tmp_path, "[download]\nattempts = 6\nconcurrency = = 4\n")
    assert message.startswith("job.toml:3:15: invalid TOML: Invalid value")
    assert "(at line" not in message


def test_credentials_in_a_bad_base_url_are_not_echoed(tmp_path: Path) -> None:
    message = job_error(tmp_path, '[server]\nbase_url = "ftp://user:secret@host/"\n')
    assert "secret" not in message


def test_base_url_gets_a_trailing_slash(tmp_path: Path) -> None:
    text = '[server]\nbase_url = "http://127.0.0.1:8080/nbia-api/services/v4"\n[[query]]\ncollection = "A"\n'
    assert (
        load_job(write(tmp_path / "job.toml", text)).server.base_url
        == "http://127.0.0.1:8080/nbia-api/services/v4/"
    )


def test_paths_are_relative_to_the_job_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs"
    shutil.copy(MANIFEST_DIR / "medium_manifest.tcia", write(jobs / "lists" / "x", "").parent / "m.tcia")
    write(jobs / "lists" / "t.tsv", f"SeriesInstanceUID\tx\n{UID_A}\t1\n")
    job = write(
        jobs / "job.toml",
        '[output]\ndest = "out"\n[series]\nmanifests = ["lists/m.tcia"]\ntables = ["lists/t.tsv"]\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_job(Path("..") / "jobs" / job.name)
    assert len(spec.explicit_uids) == 21
    assert spec.dest == jobs.absolute() / "out"
    assert spec.explicit_uids[-1] == UidOrigin(UID_A, "lists/t.tsv:2")


def test_uids_are_deduplicated_across_sources_first_origin_wins(tmp_path: Path) -> None:
    shutil.copy(MANIFEST_DIR / "small_manifest.tcia", tmp_path / "a.tcia")
    shutil.copy(MANIFEST_DIR / "medium_manifest.tcia", tmp_path / "b.tcia")
    write(tmp_path / "c.csv", f"Series UID\n{SMALL_FIRST}\n{UID_B}\n{UID_B}\n")
    text = (
        f'[series]\nuids = ["{SMALL_FIRST}", "{UID_A}", "{UID_A}"]\n'
        'manifests = ["a.tcia", "b.tcia"]\ntables = ["c.csv"]\n'
    )
    spec = load_job(write(tmp_path / "job.toml", text))
    uids = [o.uid for o in spec.explicit_uids]
    small = read_manifest(tmp_path / "a.tcia").uids
    medium = read_manifest(tmp_path / "b.tcia").uids
    assert set(small) < set(medium)
    # inline: 2 new; a.tcia: 4 new; b.tcia: 15 new; c.csv: UID_B
    assert len(uids) == len(set(uids)) == 2 + 4 + 15 + 1
    assert uids[:2] == [SMALL_FIRST, UID_A]
    assert spec.explicit_uids[0].origin.endswith("job.toml:series.uids[0]")
    assert spec.explicit_uids[2] == UidOrigin(small[1], "a.tcia:8")
    assert spec.explicit_uids[-1] == UidOrigin(UID_B, "c.csv:3")
    # UID_A again inline; SMALL_FIRST in a.tcia; small's 5 in b.tcia;
    # SMALL_FIRST in c.csv; UID_B twice in c.csv
    assert spec.duplicates == 1 + 1 + 5 + 1 + 1


def test_lenient_mode_carries_problems_from_every_list(tmp_path: Path) -> None:
    write(tmp_path / "a.tcia", f"ListOfSeriesToDownload=\n{UID_A}\nbad line\n")
    write(tmp_path / "b.csv", f"SeriesInstanceUID\n{UID_B}\n1.2.03\n")
    job = write(tmp_path / "job.toml", '[series]\nmanifests = ["a.tcia"]\ntables = ["b.csv"]\n')
    with pytest.raises(InputError, match=r"^a.tcia:3: 'bad line' is not a DICOM UID"):
        load_job(job)
    spec = load_job(job, strict=False)
    assert [o.uid for o in spec.explicit_uids] == [UID_A, UID_B]
    assert [p.describe().split(" ")[0] for p in spec.problems] == ["a.tcia:3:", "b.csv:3:"]
    assert spec.problem_count == 2


def test_cartesian_product_of_server_filters() -> None:
    q = query(
        'collection = ["QIN-HEADNECK", "HNSCC"]\nmodality = ["CT", "PT", "CT"]\n'
        'body_part = "HEADNECK"\nmodel = "X"'
    )
    assert q.server_filter_sets() == [
        {"collection": "QIN-HEADNECK", "modality": "CT", "body_part": "HEADNECK", "manufacturer_model": "X"},
        {"collection": "QIN-HEADNECK", "modality": "PT", "body_part": "HEADNECK", "manufacturer_model": "X"},
        {"collection": "HNSCC", "modality": "CT", "body_part": "HEADNECK", "manufacturer_model": "X"},
        {"collection": "HNSCC", "modality": "PT", "body_part": "HEADNECK", "manufacturer_model": "X"},
    ]
    every = query(
        'collection = "C"\npatient_id = "P"\nstudy_uid = "1.2.3"\nmodality = "M"\nbody_part = "B"\n'
        'manufacturer = "GE"\nmanufacturer_model = "Signa"'
    )
    assert every.server_filter_sets() == [
        {
            "collection": "C",
            "patient_id": "P",
            "study_uid": "1.2.3",
            "modality": "M",
            "body_part": "B",
            "manufacturer": "GE",
            "manufacturer_model": "Signa",
        }
    ]


def test_accepts_applies_inclusive_ranges_and_regex() -> None:
    q = query(
        'collection = "A"\nimage_count = { min = 50, max = 200 }\n'
        'series_date = { from = "2001-01-01", to = 2010-12-31 }\ndescription = "(?i)^axial"'
    )
    day = date(2005, 6, 1)
    assert q.accepts(50, day, "AXIAL 3mm")
    assert q.accepts(200, date(2010, 12, 31), "axial")
    assert not q.accepts(49, day, "axial")
    assert not q.accepts(201, day, "axial")
    assert not q.accepts(100, date(2000, 12, 31), "axial")
    assert not q.accepts(100, day, "coronal axial")
    # a missing value fails the filter that needs it
    assert not q.accepts(None, day, "axial")
    assert not q.accepts(100, None, "axial")
    assert not q.accepts(100, day, None)


def test_accepts_without_client_filters_takes_anything() -> None:
    q = query('collection = "A"')
    assert q.accepts(None, None, None)
    half_open = query('collection = "A"\nimage_count = { max = 10 }')
    assert half_open.accepts(0, None, None)
    assert not half_open.accepts(11, None, None)
    search = query('collection = "A"\ndescription = "T1"')
    assert search.accepts(None, None, "AX T1 POST")


def test_describe_is_one_readable_line() -> None:
    q = query(
        'collection = ["QIN-HEADNECK", "HNSCC"]\nmodality = "CT"\nimage_count = { min = 50 }\n'
        'series_date = { to = "2010-12-31" }\ndescription = "^ax"'
    )
    assert q.describe() == (
        "collection in (QIN-HEADNECK, HNSCC); modality = CT; images >= 50; series date …..2010-12-31; "
        "description ~ /^ax/"
    )


@pytest.mark.parametrize(
    "layout",
    [
        "classic",
        "descriptive",
        "flat",
        "{Collection}/{Modality}/{SeriesInstanceUID}",
        "{PatientID}-{SeriesInstanceUID}",
    ],
)
def test_layouts_accepted(tmp_path: Path, layout: str) -> None:
    spec = load_job(
        write(tmp_path / "job.toml", f'[output]\nlayout = "{layout}"\n[[query]]\ncollection = "A"\n')
    )
    expected_template = {
        "classic": "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}",
        "descriptive": None,
        "flat": "{SeriesInstanceUID}",
    }.get(layout, layout)
    assert spec.output.layout == layout
    assert spec.output.layout_template == expected_template


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("{Collection}/{PatientID}", "must contain {SeriesInstanceUID}"),
        ("/abs/{SeriesInstanceUID}", "must be a relative path"),
        ("C:/{SeriesInstanceUID}", "must be a relative path"),
        ("{Collection}/../{SeriesInstanceUID}", "may not contain '..'"),
        ("{Collection}//{SeriesInstanceUID}", "may not contain '..', '.' or empty"),
        ("{Colection}/{SeriesInstanceUID}", "unknown layout field {Colection}"),
        ("{SeriesInstanceUID:>10}", "may not carry a format spec"),
        ("{SeriesInstanceUID", "is malformed"),
        ("nested", "unknown layout 'nested'"),
    ],
)
def test_bad_layouts_are_refused(tmp_path: Path, layout: str, expected: str) -> None:
    message = job_error(tmp_path, f'[output]\nlayout = "{layout}"\n[[query]]\ncollection = "A"\n')
    assert message.startswith("job.toml: output.layout: ")
    assert expected in message


def test_load_job_detects_manifest_and_tables(tmp_path: Path) -> None:
    manifest_job = load_job(MANIFEST_DIR / "small_manifest.tcia")
    assert len(manifest_job.explicit_uids) == 5
    assert manifest_job.queries == ()
    assert manifest_job.server.base_url == DEFAULT_BASE_URL
    assert manifest_job.source == MANIFEST_DIR / "small_manifest.tcia"

    txt_manifest = write(tmp_path / "list.txt", f"ListOfSeriesToDownload=\n{UID_A}\n")
    assert [o.uid for o in load_job(txt_manifest).explicit_uids] == [UID_A]
    odd_name = write(
        tmp_path / "download.manifest", f"manifestVersion=3.0\nListOfSeriesToDownload=\n{UID_B}\n"
    )
    assert load_job(odd_name).explicit_uids == (UidOrigin(UID_B, f"{odd_name}:3"),)
    for name in ("t.csv", "t.tsv", "t.txt", "T.CSV"):
        table = write(tmp_path / name, f"SeriesInstanceUID\n{UID_C}\n{UID_C}\n")
        spec = load_job(table)
        assert spec.explicit_uids == (UidOrigin(UID_C, f"{table}:2"),)
        assert spec.duplicates == 1


def test_load_job_refuses_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot tell what kind of input"):
        load_job(write(tmp_path / "job.yaml", "collection: A\n"))
    with pytest.raises(InputError, match="file not found"):
        load_job(tmp_path / "nope.toml")
    with pytest.raises(InputError, match="zip archive"):
        zipped = tmp_path / "a.tcia"
        zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 30)
        load_job(zipped)


def test_for_uids_and_overrides() -> None:
    spec = JobSpec.for_uids([UidOrigin(UID_A, "cli")])
    assert spec.source is None and spec.dest is None
    changed = spec.with_overrides(base_url="http://127.0.0.1:9/x", dest=Path("rel/out"))
    assert changed.server.base_url == "http://127.0.0.1:9/x/"
    assert changed.dest == Path("rel/out").absolute()
    assert spec.server.base_url == DEFAULT_BASE_URL
    with pytest.raises(InputError, match=r"^--base-url: base_url: must be an http"):
        spec.with_overrides(base_url="not a url")
    with pytest.raises(InputError, match="nothing to download"):
        JobSpec.for_uids([])


def test_sections_are_frozen() -> None:
    spec = JobSpec.for_uids([UidOrigin(UID_A, "cli")])
    with pytest.raises(ValueError, match="frozen"):
        spec.download.concurrency = 9  # type: ignore[misc]
