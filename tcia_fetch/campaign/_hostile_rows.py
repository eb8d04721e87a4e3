"""Hostile-server families "bad-rows", "reserved-names" and "path-collisions" (issue 14, items 4, 5, 9).

Every case runs the real CLI twice against a fake server whose answers carry the hostile data,
and judges what a user is left with:

* bad-rows: ``getSeries`` rows with unusable UIDs (``../../../etc/evil``, empty, 299 characters,
  an ANSI escape) among good ones, and one ``getSeriesMetadata`` row that does not fit in a chunk.
  Every good series must be published; each bad one reported as a failed series (reference
  ``bad-server-row``), exit 1, nothing written outside the destination, no raw escape printed; the
  rerun reports the same failures, downloads nothing again, and exits 1 again.
* reserved-names: collections named ``metadata.csv`` and ``Catalog.Parquet``. Every series is
  published (under ``_metadata.csv/``...), metadata.csv stays a file, exit 0 on both runs.
* path-collisions: two series whose descriptive paths are the same. Both published under distinct
  paths, exit 0; the rerun downloads nothing and moves nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tcia_fetch.campaign.hostile_server import ServerCase, ServerCaseOutcome, run_cli_measured
from tcia_fetch.store.journal import Journal
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, serve_in_background

__all__ = ["cases"]

_BAD_ROW = "bad-server-row"
_TIMEOUT_S = 120.0
#: The twins of path-collisions: two UIDs that share their last five characters.
_TWIN_UIDS = ("1.2.826.0.1.3680043.10.1.77712345", "1.2.826.0.1.3680043.10.2.88812345")
#: Descriptive-path columns the second twin copies from the first.
_TWIN_COLUMNS = (
    "Collection",
    "PatientID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyID",
    "StudyDesc",
    "SeriesNumber",
    "SeriesDescription",
)


def cases() -> list[ServerCase]:
    """The three families' cases (a handful of tiny series each; each case runs the CLI twice)."""
    return [
        ServerCase("bad-rows", "bad-uids-and-bad-metadata-row", _bad_rows),
        # The same end states are checked in process on every CI run
        # (tests/engine/test_run_names.py); the CLI versions run with the full campaign.
        ServerCase("reserved-names", "collection-named-metadata-csv", _reserved_names, heavy=True),
        ServerCase("path-collisions", "descriptive-twins", _path_collisions, heavy=True),
    ]


def _catalog(extra: tuple[str, ...] = (), *, collections: int = 1) -> Catalog:
    return Catalog.generate(
        seed=14,
        collections=collections,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(2, 3),
        instance_bytes=(1_500, 3_000),
        extra_series_uids=extra,
    )


@dataclass
class _Run:
    exit_code: int
    report: dict[str, object]
    output: str
    peak_rss_mb: float


class _Judge:
    """Collects the problems of one case while its runs are checked."""

    def __init__(self, family: str, name: str) -> None:
        self.outcome = ServerCaseOutcome(family, name)

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.outcome.problems.append(problem)


def _run(workdir: Path, base_url: str, job: Path, label: str, *extra: str) -> _Run:
    out = workdir / "out"
    report_path = workdir / f"report-{label}.json"
    env = {"XDG_CONFIG_HOME": str(workdir / "config"), "HOME": str(workdir / "home")}
    result = run_cli_measured(
        ["run", str(job), "--out", str(out), "--base-url", base_url, "--report", str(report_path), *extra],
        env=env,
        cwd=workdir,
        timeout_s=_TIMEOUT_S,
    )
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    return _Run(result.exit_code, report, result.stdout + result.stderr, result.peak_rss_mb)


def _uid_job(workdir: Path, uids: list[str]) -> Path:
    job = workdir / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[download]\nconcurrency = 3\n\n[series]\nuids = [{listed}]\n", encoding="utf-8")
    return job


def _failures(run: _Run) -> dict[str, str]:
    found = run.report.get("failures")
    if not isinstance(found, list):
        return {}
    return {str(item.get("SeriesInstanceUID")): str(item.get("reference")) for item in found}


def _int(run: _Run, key: str) -> int:
    value = run.report.get(key)
    return value if isinstance(value, int) else -1


def _downloads(fake: FakeNBIA) -> int:
    return sum(1 for record in fake.request_log if record.endpoint.startswith("getImage"))


def _outside_destination(workdir: Path) -> list[str]:
    """Files a run created in the work directory outside out/ (only the job and reports belong)."""
    allowed = {"job.toml", "out", "config", "home"}
    return sorted(
        entry.name
        for entry in workdir.iterdir()
        if entry.name not in allowed and not entry.name.startswith("report-")
    )


def _two_runs(
    judge: _Judge,
    workdir: Path,
    fake: FakeNBIA,
    job: Path,
    *,
    expect_exit: int,
    expect_done: int,
    expect_failed: dict[str, str] | Callable[[dict[str, str]], bool],
    extra: tuple[str, ...] = (),
) -> tuple[_Run, _Run]:
    """Run, then rerun; check exit codes, counts and failures of both, and that the rerun is idle."""
    with serve_in_background(fake) as server:
        base_url = server.base_url
        first = _run(workdir, base_url, job, "1", *extra)
        downloads = _downloads(fake)
        second = _run(workdir, base_url, job, "2", *extra)
        again = _downloads(fake) - downloads
    outcome = judge.outcome
    outcome.exit_code = first.exit_code
    outcome.peak_rss_mb = max(first.peak_rss_mb, second.peak_rss_mb)
    outcome.series_done = _int(first, "done")
    outcome.series_failed = _int(first, "failed")
    for label, run, done in (("first run", first, expect_done), ("rerun", second, 0)):
        judge.check(run.exit_code == expect_exit, f"{label}: exit {run.exit_code}, expected {expect_exit}")
        judge.check(_int(run, "done") == done, f"{label}: done {_int(run, 'done')}, expected {done}")
        failures = _failures(run)
        if callable(expect_failed):
            judge.check(expect_failed(failures), f"{label}: unexpected failures {failures}")
        else:
            judge.check(failures == expect_failed, f"{label}: failures {failures}, expected {expect_failed}")
        judge.check("\x1b[" not in run.output, f"{label}: a raw escape sequence reached the terminal")
    judge.check(_int(second, "skipped") == expect_done, f"rerun skipped {_int(second, 'skipped')}")
    judge.check(again == 0, f"the rerun downloaded {again} series again")
    judge.check(not _outside_destination(workdir), f"written outside out/: {_outside_destination(workdir)}")
    return first, second


def _published_dirs(out: Path) -> dict[str, Path]:
    """Series directory per UID, from metadata.csv (what a user reads)."""
    found: dict[str, Path] = {}
    with open(out / "metadata.csv", newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            found[row["Series UID"]] = out / row["File Location"]
    return found


def _check_published(judge: _Judge, out: Path, uids: list[str]) -> dict[str, Path]:
    try:
        published = _published_dirs(out)
    except (OSError, KeyError, csv.Error) as exc:
        judge.check(False, f"metadata.csv unreadable: {exc}")
        return {}
    for uid in uids:
        where = published.get(uid)
        judge.check(where is not None and where.is_dir() and any(where.iterdir()), f"{uid} not published")
    return published


# -- bad-rows ------------------------------------------------------------------------------------


def _bad_rows(workdir: Path) -> ServerCaseOutcome:
    """Bad UIDs among a query's rows, and one row of a metadata chunk that does not fit."""
    judge = _Judge("bad-rows", "bad-uids-and-bad-metadata-row")
    catalog = _catalog(collections=2)
    queried, listed = catalog.collections
    in_query = [entry.uid for entry in catalog.series if entry.collection == queried]
    in_list = [entry.uid for entry in catalog.series if entry.collection == listed]
    broken = in_list[1]
    rules = [
        FaultRule(FaultKind.BAD_UID_ROWS, times=None),
        FaultRule(FaultKind.ROW_VALUE, series_uid=broken, times=None, column="FileSize", value="-5"),
    ]
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    job = workdir / "job.toml"
    listed_uids = ", ".join(f'"{uid}"' for uid in in_list)
    job.write_text(
        f'[download]\nconcurrency = 3\n\n[[query]]\ncollection = "{queried}"\n\n'
        f"[series]\nuids = [{listed_uids}]\n",
        encoding="utf-8",
    )
    good = [uid for uid in in_query + in_list if uid != broken]

    def five_bad(failures: dict[str, str]) -> bool:
        # four bad UIDs from getSeries (reported under labels) and the series of the broken row
        return (
            len(failures) == 5
            and set(failures.values()) == {_BAD_ROW}
            and failures.get(broken) == _BAD_ROW
            and not set(failures) & set(good)
        )

    first, _ = _two_runs(
        judge, workdir, fake, job, expect_exit=1, expect_done=len(good), expect_failed=five_bad
    )
    out = workdir / "out"
    _check_published(judge, out, good)
    named = sorted(str(path) for path in workdir.rglob("*evil*"))
    judge.check(not named and not (workdir / "etc").exists(), f"a path from a bad UID was created: {named}")
    # status reads the journal: the bad series must be failed there too, not forever pending
    journal = Journal.open(out / ".tcia-fetch", run_id="hostile-rows-judge")
    try:
        recorded = {record.series_uid for record in journal.iter_latest("failed")}
    finally:
        journal.close()
    judge.check(recorded == set(_failures(first)), f"journal's failed series {sorted(recorded)}")
    return judge.outcome


# -- reserved-names ------------------------------------------------------------------------------


def _reserved_names(workdir: Path) -> ServerCaseOutcome:
    judge = _Judge("reserved-names", "collection-named-metadata-csv")
    catalog = _catalog()
    uids = [entry.uid for entry in catalog.series]
    rules = [
        FaultRule(
            FaultKind.ROW_VALUE, series_uid=uids[0], times=None, column="Collection", value="metadata.csv"
        ),
        FaultRule(
            FaultKind.ROW_VALUE, series_uid=uids[1], times=None, column="Collection", value="Catalog.Parquet"
        ),
    ]
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    job = _uid_job(workdir, uids)
    _two_runs(judge, workdir, fake, job, expect_exit=0, expect_done=len(uids), expect_failed={})
    out = workdir / "out"
    judge.check((out / "metadata.csv").is_file(), "metadata.csv is not a file")
    published = _check_published(judge, out, uids)
    first = published.get(uids[0])
    judge.check(
        first is not None and first.relative_to(out).parts[0] == "_metadata.csv", f"{uids[0]} at {first}"
    )
    second = published.get(uids[1])
    judge.check(
        second is not None and second.relative_to(out).parts[0] == "_Catalog.Parquet",
        f"{uids[1]} at {second}",
    )
    return judge.outcome


# -- path-collisions -----------------------------------------------------------------------------


def _path_collisions(workdir: Path) -> ServerCaseOutcome:
    judge = _Judge("path-collisions", "descriptive-twins")
    catalog = _catalog(_TWIN_UIDS)
    first, second = (catalog.get(uid) for uid in _TWIN_UIDS)
    assert first is not None and second is not None
    row = first.metadata_row()
    rules = [
        FaultRule(
            FaultKind.ROW_VALUE, series_uid=second.uid, times=None, column=column, value=row.get(column)
        )
        for column in _TWIN_COLUMNS
    ]
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    uids = [entry.uid for entry in catalog.series]
    job = _uid_job(workdir, uids)
    _two_runs(
        judge,
        workdir,
        fake,
        job,
        expect_exit=0,
        expect_done=len(uids),
        expect_failed={},
        extra=("--layout", "descriptive"),
    )
    out = workdir / "out"
    published = _check_published(judge, out, uids)
    a, b = published.get(first.uid), published.get(second.uid)
    judge.check(a is not None and b is not None and a != b, f"twins at {a} and {b}")
    if a is not None and b is not None:
        judge.check(a.parent == b.parent, "twins should differ only in their last component")
        names = sorted((a.name, b.name))
        judge.check(names[1].startswith(names[0] + "~"), f"second twin not disambiguated: {names}")
    return judge.outcome
