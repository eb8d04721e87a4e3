"""The Dask runner: address checks, the shared-destination probe, a missing install, a real local run."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tcia_fetch.campaign.process import serve_in_thread
from tcia_fetch.cluster import _distributed
from tcia_fetch.cluster.address import SchedulerAddress, parse_scheduler
from tcia_fetch.cluster.remote import probe_destination
from tcia_fetch.cluster.runner import _check_shared_destination, run_on_cluster
from tcia_fetch.engine.run import RunOptions
from tcia_fetch.errors import DestinationError, InputError
from tcia_fetch.store.destination import Destination
from tcia_fetch.testing import Catalog, FakeNBIA


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local:4", SchedulerAddress(local_workers=4)),
        ("tcp://10.1.2.3:8786", SchedulerAddress(url="tcp://10.1.2.3:8786")),
        ("tls://sched.example.org:8786/", SchedulerAddress(url="tls://sched.example.org:8786")),
    ],
)
def test_scheduler_addresses_are_parsed(text: str, expected: SchedulerAddress) -> None:
    assert parse_scheduler(text) == expected


@pytest.mark.parametrize("text", ["local:0", "local:x", "http://h:1", "h:8786", "tcp://h", "", "local:9999"])
def test_bad_scheduler_addresses_are_input_errors(text: str) -> None:
    with pytest.raises(InputError, match="--scheduler"):
        parse_scheduler(text)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--scheduler", "nowhere"], "--scheduler"),
        (["--scheduler", "local:2", "--shard", "0/2"], "do not mix"),
    ],
)
def test_bad_scheduler_options_exit_2_before_any_traffic(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    """In process (click's runner): the same exit code, message and untouched disk as the
    installed command, without paying an interpreter start per case."""
    from click.testing import CliRunner

    from tcia_fetch.cli.main import cli

    job = tmp_path / "job.toml"
    job.write_text('[[query]]\ncollection = "X"\n')
    out = tmp_path / "out"
    # An address nothing listens on: a run that got as far as the network would fail differently.
    args = ["run", str(job), "--out", str(out), "--base-url", "http://127.0.0.1:9/", *extra]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2, done.output
    assert needle in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("where", "url", "needle"),
    [
        ("--out", "gs://lake/tcia", "unsupported destination scheme 'gs'"),
        ("output.dest", "gs://lake/tcia", "unsupported destination scheme 'gs'"),
        ("--out", "s3://lake/tcia", "keep = 'dicom' is not supported"),
    ],
)
def test_a_bad_bucket_destination_for_a_dask_run_exits_2_and_creates_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, url: str, needle: str
) -> None:
    """A Dask run writes to an s3:// bucket (tests/cluster/test_cluster_bucket.py), but refuses,
    before any traffic and without creating a local folder like ``gs:/lake/tcia``, what a
    single-process run refuses: another URL scheme, and keep = "dicom" on a bucket."""
    from click.testing import CliRunner

    from tcia_fetch.cli.main import cli

    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.toml"
    text = '[[query]]\ncollection = "X"\n'
    args = ["run", str(job), "--base-url", "http://127.0.0.1:9/", "--scheduler", "local:1"]
    if where == "--out":
        args += ["--out", url]
    else:
        text = f'[output]\ndest = "{url}"\n' + text
    job.write_text(text)
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2, done.output
    assert needle in done.stderr
    if "scheme" in needle:
        assert where in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job.toml"]


def test_a_missing_dask_install_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match=r"pip install 'tcia-fetch\[dask\]'"):
        _distributed._import()
    with pytest.raises(InputError, match=r"pip install 'tcia-fetch\[dask\]'"):
        _distributed.require()  # the up-front check, before the destination or the network


def test_the_probe_tells_a_shared_destination_from_another_one(tmp_path: Path) -> None:
    state = tmp_path / ".tcia-fetch"
    state.mkdir()
    assert "cannot read" in str(probe_destination(str(tmp_path), "probe-1", "n1"))
    (state / "probe-1").write_text("other")
    assert "not the client's destination" in str(probe_destination(str(tmp_path), "probe-1", "n1"))
    (state / "probe-1").write_text("n1")
    assert probe_destination(str(tmp_path), "probe-1", "n1") is None
    assert [p.read_text() for p in state.glob("probe-1.*")] == ["n1"]


class _TwoWorkers:
    """A cluster stand-in: one worker shares the destination, the other runs the probe elsewhere."""

    def __init__(self, elsewhere: Path) -> None:
        self.elsewhere = elsewhere

    async def run_on_workers(self, function: Any, root: str, name: str, nonce: str) -> dict[str, Any]:
        return {
            "tcp://node1:1": function(root, name, nonce),
            "tcp://node2:1": function(str(self.elsewhere), name, nonce),
        }


def test_a_destination_not_shared_with_every_worker_stops_the_run_naming_the_worker(tmp_path: Path) -> None:
    destination = Destination(tmp_path / "out")
    destination.prepare()
    elsewhere = tmp_path / "node2-local-disk"
    (elsewhere / ".tcia-fetch").mkdir(parents=True)

    async def main() -> None:
        await _check_shared_destination(_TwoWorkers(elsewhere), destination)  # type: ignore[arg-type]

    with pytest.raises(DestinationError) as caught:
        anyio.run(main)
    assert "tcp://node2:1" in str(caught.value)
    assert "tcp://node1:1" not in str(caught.value)
    assert "not shared with every Dask worker" in str(caught.value)
    assert list(destination.state_dir.glob("cluster-probe-*")) == []  # probes cleaned up


#: Rows the fake server adds to every getSeries answer: a path traversal and an empty UID.
BAD_UIDS = ("../../../etc/evil", "")


def _failed_records(out: Path) -> dict[str, tuple[str | None, str | None, int | None]]:
    from tcia_fetch.store.journal import Journal

    journal = Journal.open(out / ".tcia-fetch", run_id="judge")
    try:
        return {r.series_uid: (r.reason, r.reference, r.attempts) for r in journal.iter_latest("failed")}
    finally:
        journal.close()


@pytest.mark.e2e
def test_a_local_cluster_run_downloads_everything_reports_once_and_resumes(tmp_path: Path) -> None:
    from tcia_fetch.engine.run import fetch
    from tcia_fetch.plan.rows import BAD_ROW_REFERENCE, bad_uid_label
    from tcia_fetch.testing import FaultKind, FaultPlan, FaultRule

    catalog = Catalog.generate(seed=5, collections=2, patients_per_collection=2, series_per_study=2)
    uids = sorted(entry.uid for entry in catalog.series)
    listed = ", ".join(f'"{c}"' for c in sorted({e.collection for e in catalog.series}))
    job = tmp_path / "job.toml"
    job.write_text(f"[download]\nconcurrency = 3\n\n[[query]]\ncollection = [{listed}]\n")
    out = tmp_path / "out"
    bad_rows = FaultPlan(rules=[FaultRule(FaultKind.BAD_UID_ROWS, times=None, uids=BAD_UIDS)])
    bad = {bad_uid_label(text) for text in BAD_UIDS}
    with serve_in_thread(FakeNBIA(catalog, faults=bad_rows)) as server:
        options = RunOptions(out=out, base_url=server.base_url)
        report = run_on_cluster(job, options, "local:2")
        assert report.exit_code == 1  # the bad rows: failed series, as in one process
        assert (report.planned, report.done, report.failed) == (len(uids) + len(bad), len(uids), len(bad))
        assert {f.series_uid for f in report.failures} == bad
        assert {f.reference for f in report.failures} == {BAD_ROW_REFERENCE}
        assert report.engine["workers"] == 2
        assert report.engine["cluster_semaphore_max_leases"] == 3
        # Every series ran under a lease (taken from the scheduler or handed on within a
        # worker), and every lease went back at the end. (How often one is handed on depends
        # on timing: tests/cluster/test_leases.py checks that deterministically.)
        leases = report.engine["leases"]
        assert leases["acquired"] + leases["reused"] == len(uids)
        assert leases["acquired"] >= 1 and leases["released"] == leases["acquired"]
        with (out / "metadata.csv").open(newline="", encoding="utf-8") as handle:
            assert sorted(row["Series UID"] for row in csv.DictReader(handle)) == uids
        # The journal holds the bad rows as failed series exactly as a single-process run's does
        # (status counts them, --retry-failed asks for them again).
        single = tmp_path / "single"
        one = anyio.run(lambda: fetch(job, RunOptions(out=single, base_url=server.base_url)))
        assert [f.as_dict() for f in one.failures] == [f.as_dict() for f in report.failures]
        assert _failed_records(out) == _failed_records(single)
        assert set(_failed_records(out)) == bad

        # Nothing left to download: the rerun plans, skips everything and starts no cluster.
        again = run_on_cluster(job, options, "local:1")
        assert (again.planned, again.done, again.skipped) == (len(uids) + len(bad), 0, len(uids))
        assert again.engine["workers"] == 0
        assert {f.series_uid for f in again.failures} == bad
        assert _failed_records(out) == _failed_records(single)  # kept once, not appended again


def _planned(uid: str) -> Any:
    from types import MappingProxyType

    from tcia_fetch.plan.model import PlannedSeries
    from tcia_fetch.series.expectation import SeriesExpectation

    return PlannedSeries(uid, SeriesExpectation(uid, 1, 5), MappingProxyType({"SeriesInstanceUID": uid}), "t")


def test_a_retry_adopts_what_a_killed_worker_published_and_never_publishes_twice(tmp_path: Path) -> None:
    from pathlib import PurePosixPath

    from tcia_fetch.cluster.remote import adopt_published
    from tcia_fetch.store.journal import Journal
    from tests.store.helpers import record, stage_series

    uid = "1.2.826.0.1.3680043.8.498.1"
    destination = Destination(tmp_path / "out")
    destination.prepare()
    writer = Journal.open(destination.state_dir, run_id="r")
    assert not adopt_published(destination, writer, "flat", _planned(uid), "r")  # nothing there yet

    # The killed worker: verified record, then publish, then death before its "done" record.
    staging, files = stage_series(destination, uid, {"1.dcm": b"12345"})
    dead = Journal.open(destination.state_dir, run_id="r")
    dead.append(record(uid, "verified", run_id="r", path=uid, files=files))
    destination.publish(staging, PurePosixPath(uid))
    dead.close()

    assert adopt_published(destination, writer, "flat", _planned(uid), "r")
    writer.close()
    assert Journal.open(destination.state_dir, run_id="x").latest()[uid].status == "done"

    # A directory that does not match its record is never adopted (the fetch then refuses to
    # publish over it and reports it).
    (destination.root / uid / "1.dcm").write_bytes(b"99999")
    other = Journal.open(destination.state_dir, run_id="r")
    assert not adopt_published(destination, other, "flat", _planned(uid), "r")


def _row(uid: str, number: str) -> Any:
    """A descriptive-layout row: two series ending in the same five UID characters, with the same
    number and description, render the same directory (store/seriespath.py)."""
    from types import MappingProxyType

    from tcia_fetch.plan.model import PlannedSeries
    from tcia_fetch.series.expectation import SeriesExpectation

    row = {
        "Collection": "C",
        "PatientID": "P",
        "StudyInstanceUID": "1.2.3.4",
        "SeriesInstanceUID": uid,
        "SeriesNumber": number,
        "SeriesDescription": "T1",
    }
    return PlannedSeries(uid, SeriesExpectation(uid, 1, 5), MappingProxyType(row), "t")


def test_a_retry_adopts_by_the_recorded_path_a_disambiguated_or_repaired_series(tmp_path: Path) -> None:
    """The killed worker published where the journal says, not where the layout renders: under
    ``<name>~<hash>`` (another series held the plain name), or back at a repaired series' old path."""
    from pathlib import PurePosixPath

    from tcia_fetch.cluster.remote import adopt_published
    from tcia_fetch.store.journal import Journal
    from tcia_fetch.store.layout import disambiguated, render_series_path
    from tests.store.helpers import record, stage_series

    holder, uid = "1.2.826.0.1.3680043.8.498.12345", "1.2.826.0.1.3680043.8.498.9.12345"
    destination = Destination(tmp_path / "out")
    destination.prepare()
    plain = render_series_path("descriptive", _row(uid, "1").metadata)
    assert plain == render_series_path("descriptive", _row(holder, "1").metadata)  # they collide
    staging, _ = stage_series(destination, holder, {"1.dcm": b"holder"})
    destination.publish(staging, plain)  # the other series holds the plain name

    second = disambiguated(plain, uid)
    staging, files = stage_series(destination, uid, {"1.dcm": b"12345"})
    dead = Journal.open(destination.state_dir, run_id="r")
    dead.append(record(uid, "verified", run_id="r", path=second.as_posix(), files=files))
    destination.publish(staging, second)
    dead.close()
    writer = Journal.open(destination.state_dir, run_id="r")
    assert adopt_published(destination, writer, "descriptive", _row(uid, "1"), "r")
    writer.close()
    adopted = Journal.open(destination.state_dir, run_id="x").latest()[uid]
    assert (adopted.status, adopted.path) == ("done", second.as_posix())
    assert (destination.root / plain / "1.dcm").read_bytes() == b"holder"  # the holder untouched

    # A damaged series published under an older layout: its repair went back to the recorded
    # path, which today's layout does not render; the retry adopts that repair (this run's record).
    repaired = "1.2.826.0.1.3680043.8.498.77"
    old_place = PurePosixPath("older-layout") / repaired
    staging, files = stage_series(destination, repaired, {"1.dcm": b"fresh"})
    dead = Journal.open(destination.state_dir, run_id="r2")
    dead.append(record(repaired, "verified", run_id="r2", path=old_place.as_posix(), files=files))
    destination.publish(staging, old_place)
    dead.close()
    writer = Journal.open(destination.state_dir, run_id="r2")
    row = _row(repaired, "2")
    assert not adopt_published(destination, writer, "descriptive", row, "r2")  # not knowing the path
    assert adopt_published(
        destination, writer, "descriptive", row, "r2", recorded_path=old_place.as_posix(), damaged=True
    )
    writer.close()
    assert Journal.open(destination.state_dir, run_id="x").latest()[repaired].status == "done"


def test_a_damaged_series_is_never_adopted_from_the_record_of_its_damaged_tree(tmp_path: Path) -> None:
    from pathlib import PurePosixPath

    from tcia_fetch.cluster.remote import adopt_published
    from tcia_fetch.store.journal import Journal
    from tests.store.helpers import record, stage_series

    uid = "1.2.826.0.1.3680043.8.498.5"
    destination = Destination(tmp_path / "out")
    destination.prepare()
    staging, files = stage_series(destination, uid, {"1.dcm": b"12345"})
    earlier = Journal.open(destination.state_dir, run_id="old")
    earlier.append(record(uid, "done", run_id="old", path=uid, files=files))
    destination.publish(staging, PurePosixPath(uid))
    earlier.close()
    writer = Journal.open(destination.state_dir, run_id="new")
    # The tree still matches its old record (the damage was, say, a missing file since put back):
    # the run decided to repair it, so only a record of this run could be adopted.
    assert not adopt_published(
        destination, writer, "flat", _planned(uid), "new", recorded_path=uid, damaged=True
    )
    writer.close()
    assert Journal.open(destination.state_dir, run_id="x").latest()[uid].run_id == "old"
