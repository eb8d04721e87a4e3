"""``tcia-fetch run/plan/status/verify`` as a user meets them: real processes, real exit codes."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_fetch.store.lock import acquire_destination
from tcia_fetch.testing import Catalog

from .fixtures import cli, fake_server_process, leftovers, tree_fingerprint

# Every test starts interpreters (about 7 s each on a loaded 2-core machine, where a test here took
# 67 s): a hang guard sized for that work, not the suite's 120 s default.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SEED = 41
SIZING = [
    "--seed",
    str(SEED),
    "--collections",
    "2",
    "--patients-per-collection",
    "1",
    "--series-per-study",
    "3",
    "--instances-per-series",
    "2,5",
    "--instance-bytes",
    "3000,20000",
]


def catalog() -> Catalog:
    return Catalog.generate(
        seed=SEED,
        collections=2,
        patients_per_collection=1,
        series_per_study=3,
        instances_per_series=(2, 5),
        instance_bytes=(3000, 20000),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    unsafe = catalog().series[-1].uid
    with fake_server_process(
        tmp_path_factory.mktemp("server"), [*SIZING, "--fault", f"ZIP_SLIP:{unsafe},times=1000"]
    ) as url:
        yield url


def manifest(tmp_path: Path, uids: list[str]) -> Path:
    path = tmp_path / "list.tcia"
    path.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    return path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def good_uids() -> list[str]:
    return [entry.uid for entry in catalog().series[:-1]]


def test_run_verifies_reports_and_resumes(tmp_path: Path, server: str) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    uids = good_uids()
    run_args = ("run", str(manifest(tmp_path, uids)), "--out", str(out), "--base-url", server)
    result = run_cli(*run_args, "--report", str(report), "--quiet")
    assert result.returncode == 0, result.stderr
    document = json.loads(report.read_text())
    assert (document["planned"], document["done"], document["skipped"], document["failed"]) == (
        len(uids),
        len(uids),
        0,
        0,
    )
    assert document["failures"] == []
    with (out / "metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["Series UID"] for row in rows} == set(uids)
    assert all(row["File Location"].startswith("./") for row in rows)
    assert leftovers(out) == []

    status = run_cli("status", str(out), "--format", "json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["done"] == len(uids)
    assert run_cli("verify", str(out)).returncode == 0

    again = run_cli(*run_args, "--report", str(report), "--quiet")
    assert again.returncode == 0
    assert json.loads(report.read_text())["skipped"] == len(uids)


def test_verify_finds_damage_and_rerun_repairs_it(tmp_path: Path, server: str) -> None:
    out = tmp_path / "out"
    job = manifest(tmp_path, good_uids()[:2])
    assert run_cli("run", str(job), "--out", str(out), "--base-url", server, "--quiet").returncode == 0
    before = tree_fingerprint(out)
    victim = next(p for p in out.rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    damaged = run_cli("verify", str(out), "--format", "json")
    assert damaged.returncode == 1
    [entry] = json.loads(damaged.stdout)["damaged"]
    assert entry["SeriesInstanceUID"] in victim.parts
    repaired = run_cli("run", str(job), "--out", str(out), "--base-url", server, "--quiet")
    assert repaired.returncode == 0, repaired.stderr
    assert tree_fingerprint(out) == before
    assert run_cli("verify", str(out)).returncode == 0
    assert leftovers(out) == []


def test_failed_series_exit_1_and_retry_failed_retries_only_them(tmp_path: Path, server: str) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    unsafe = catalog().series[-1].uid
    uids = [*good_uids()[:2], unsafe]
    first = run_cli(
        "run",
        str(manifest(tmp_path, uids)),
        "--out",
        str(out),
        "--base-url",
        server,
        "--quiet",
        "--report",
        str(report),
    )
    assert first.returncode == 1
    assert unsafe in first.stdout
    [failure] = json.loads(report.read_text())["failures"]
    assert failure["SeriesInstanceUID"] == unsafe and failure["reference"] == "unsafe-archive"
    second = run_cli(
        "run",
        str(manifest(tmp_path, uids)),
        "--out",
        str(out),
        "--base-url",
        server,
        "--quiet",
        "--retry-failed",
        "--report",
        str(report),
    )
    assert second.returncode == 1
    document = json.loads(report.read_text())
    assert document["planned"] == 1 and document["failed"] == 1


def test_bad_input_exits_2_naming_file_and_line(tmp_path: Path, server: str) -> None:
    bad = tmp_path / "bad.tcia"
    bad.write_text("ListOfSeriesToDownload=\n1.2.3\nnot-a-uid\n")
    result = run_cli("run", str(bad), "--out", str(tmp_path / "out"), "--base-url", server)
    assert result.returncode == 2
    assert "bad.tcia:3" in result.stderr and "Traceback" not in result.stderr
    job = tmp_path / "job.toml"
    job.write_text('[download]\nconcurrency = -1\n[series]\nuids = ["1.2.3"]\n')
    result = run_cli("run", str(job), "--out", str(tmp_path / "out"), "--base-url", server)
    assert result.returncode == 2
    assert "job.toml" in result.stderr and "concurrency" in result.stderr
    no_out = run_cli("run", str(manifest(tmp_path, good_uids()[:1])), "--base-url", server)
    assert no_out.returncode == 2 and "--out" in no_out.stderr


def test_second_run_on_a_busy_destination_is_refused(tmp_path: Path, server: str) -> None:
    out = tmp_path / "out"
    state = out / ".tcia-fetch"
    state.mkdir(parents=True)
    with acquire_destination(state, run_id="another-run"):  # a live run in this very process
        result = run_cli(
            "run", str(manifest(tmp_path, good_uids()[:1])), "--out", str(out), "--base-url", server
        )
    assert result.returncode == 3
    assert str(os.getpid()) in result.stderr and socket.gethostname() in result.stderr
    assert not list(out.rglob("*.dcm"))


def test_plan_json_lists_every_series_with_sizes(tmp_path: Path, server: str) -> None:
    plan_file = tmp_path / "plan.json"
    uids = good_uids()
    result = run_cli("plan", str(manifest(tmp_path, uids)), "--base-url", server, "--json", str(plan_file))
    assert result.returncode == 0, result.stderr
    document = json.loads(plan_file.read_text())
    by_uid = {entry.uid: entry for entry in catalog().series}
    assert {row["SeriesInstanceUID"] for row in document["series"]} == set(uids)
    assert document["summary"]["total_bytes"] == sum(by_uid[uid].total_bytes for uid in uids)


def test_keep_zip_stores_verified_archives(tmp_path: Path, server: str) -> None:
    out = tmp_path / "out"
    uids = good_uids()[:2]
    result = run_cli(
        "run",
        str(manifest(tmp_path, uids)),
        "--out",
        str(out),
        "--base-url",
        server,
        "--keep",
        "zip",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.rglob("*.zip")) == sorted(f"{uid}.zip" for uid in uids)
    assert not list(out.rglob("*.dcm"))
    assert run_cli("verify", str(out)).returncode == 0


def test_sigint_stops_promptly_and_rerun_finishes(tmp_path: Path) -> None:
    with fake_server_process(tmp_path, [*SIZING, "--rate-bytes-per-s", "20000"]) as slow:
        out = tmp_path / "out"
        job = manifest(tmp_path, good_uids())
        proc = cli(
            "run",
            str(job),
            "--out",
            str(out),
            "--base-url",
            slow,
            "--log-interval",
            "1",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with proc:
            lock = out / ".tcia-fetch" / "lock"
            deadline = time.monotonic() + 60
            while not lock.exists() and time.monotonic() < deadline:  # the run has started
                time.sleep(0.05)
            time.sleep(1.5)  # series are streaming now (the server sends 20 kB/s)
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        # Prompt means the run does not wait for its downloads; the orderly shutdown after the
        # signal (report, metadata.csv, the catalog) is CPU work that took 11 s on a
        # 2-core machine at load 6-20, so the bound leaves room for that and no more.
        assert time.monotonic() - started < 25
        assert "series" in err and "done" in err  # plain progress lines, since stderr is not a terminal
        report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
        assert report["interrupted"] is True
        assert not list((out / ".tcia-fetch" / "staging").iterdir())
        assert not (out / ".tcia-fetch" / "lock").exists()
        finish = run_cli("run", str(job), "--out", str(out), "--base-url", slow, "--quiet", timeout=300)
        assert finish.returncode == 0, finish.stderr
    assert leftovers(out) == []
