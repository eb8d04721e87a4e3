"""Array jobs: N shard processes on one destination, a shard SIGKILLed and rerun, bad --shard values.

Every check reads the end state a user cares about: every series verified on disk exactly once,
metadata.csv with one row per series, ``status`` showing the whole job and each shard.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import cast

import pytest

from tcia_fetch.campaign.oracle import journal_statuses, judge_destination, published_series
from tcia_fetch.plan.shard import Shard, shard_of
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.runlock import acquire_run_lock
from tcia_fetch.testing import Catalog

from .fixtures import cli, fake_server_process

pytestmark = pytest.mark.e2e

SEED = 41
SIZING = ["--collections", "2", "--patients-per-collection", "3", "--series-per-study", "3"]
#: Bigger series for the kill test: about 11 s each at the server's 40 kB/s per connection.
BIG = ["--instances-per-series", "4,10", "--instance-bytes", "40000,90000"]


def _catalog(big: bool = False) -> Catalog:
    sizes = {"instances_per_series": (4, 10), "instance_bytes": (40_000, 90_000)} if big else {}
    return Catalog.generate(
        seed=SEED,
        collections=2,
        patients_per_collection=3,
        series_per_study=3,
        **sizes,  # type: ignore[arg-type]
    )


def _job(tmp_path: Path) -> Path:
    collections = sorted({entry.collection for entry in _catalog().series})
    listed = ", ".join(f'"{c}"' for c in collections)
    job = tmp_path / "job.toml"
    job.write_text(f"[download]\nconcurrency = 6\n\n[[query]]\ncollection = [{listed}]\n")
    return job


def _run(job: Path, out: Path, base_url: str, *extra: str) -> subprocess.Popen[bytes]:
    return cli(
        "run",
        str(job),
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--quiet",
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (out + err).decode(errors="replace")


def _status(out: Path) -> dict[str, object]:
    proc = cli("status", str(out), "--format", "json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    document: dict[str, object] = json.loads(stdout)
    return document


def _shards(status: dict[str, object]) -> list[dict[str, object]]:
    """The ``shards`` list of a ``status --format json`` document (one object per shard)."""
    return cast("list[dict[str, object]]", status["shards"])


def _metadata_uids(out: Path) -> list[str]:
    with (out / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        return [row["Series UID"] for row in csv.DictReader(handle)]


def _done(out: Path) -> set[str]:
    if not (out / ".tcia-fetch").exists():
        return set()
    return {uid for uid, status in journal_statuses(out).items() if status == "done"}


def _assert_complete(out: Path, catalog: Catalog) -> None:
    uids = [entry.uid for entry in catalog.series]
    loss = judge_destination(out, catalog, planned=uids, reported=[])
    assert loss.total == 0, loss.counts()
    assert sorted(published_series(out)) == sorted(uids)
    rows = _metadata_uids(out)
    assert sorted(rows) == sorted(uids)  # every series exactly once


def test_three_shards_at_once_fill_one_destination_and_status_shows_each(tmp_path: Path) -> None:
    catalog = _catalog()
    job = _job(tmp_path)
    out = tmp_path / "out"
    with fake_server_process(tmp_path, [*SIZING, "--seed", str(SEED)]) as base_url:
        procs = [_run(job, out, base_url, "--shard", f"{k}/3") for k in range(3)]
        results = [_finish(proc) for proc in procs]
    for code, text in results:
        assert code == 0, text
    _assert_complete(out, catalog)
    reports = [
        json.loads((out / ".tcia-fetch" / f"last-report.shard-{k}-of-3.json").read_text()) for k in range(3)
    ]
    uids = [entry.uid for entry in catalog.series]
    for k, report in enumerate(reports):
        assert report["shard"] == f"{k}/3"
        assert report["planned"] == sum(1 for uid in uids if shard_of(uid, 3) == k)
        assert report["engine"]["concurrency_cap"] == 2  # 6 split three ways
    assert sum(int(r["planned"]) for r in reports) == len(uids)
    status = _status(out)
    assert status["done"] == len(uids)
    assert status["pending"] == 0
    shards = status["shards"]
    assert isinstance(shards, list)
    assert [(s["shard"], s["state"], s["pending"]) for s in shards] == [
        ("0/3", "done", 0),
        ("1/3", "done", 0),
        ("2/3", "done", 0),
    ]
    # Nothing left behind for a later run: every writer's segment was sealed and folded.
    assert list((out / ".tcia-fetch" / "journal").glob("*.jsonl")) == []


def test_a_running_shard_keeps_a_second_copy_a_whole_job_run_and_another_split_out(tmp_path: Path) -> None:
    job = _job(tmp_path)
    out = tmp_path / "out"
    destination = Destination(out)
    destination.prepare()
    # This test process plays the live shard 1/2 (its pid is alive): no race with a real run.
    with acquire_run_lock(destination.state_dir, run_id="test-shard", shard=Shard(1, 2)):
        for extra, needle in (
            (["--shard", "1/2"], "held by"),
            ([], "in use by shard 1/2"),
            (["--shard", "0/3"], "same N"),
        ):
            code, text = _finish(_run(job, out, "http://127.0.0.1:9/nbia-api/services/v4/", *extra))
            assert code == 3, text
            assert needle in text, text
    assert _done(out) == set()


def test_a_killed_shard_reruns_while_the_other_finishes(tmp_path: Path) -> None:
    catalog = _catalog(big=True)
    job = _job(tmp_path)
    out = tmp_path / "out"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # Slow downloads, so the kill lands while series of the victim's share are streaming.
        with fake_server_process(
            tmp_path, [*SIZING, *BIG, "--seed", str(SEED), "--rate-bytes-per-s", "40000"]
        ) as base_url:
            victim = _run(job, out, base_url, "--shard", "0/2")
            other = _run(job, out, base_url, "--shard", "1/2")
            procs += [victim, other]
            mine = {entry.uid for entry in catalog.series if shard_of(entry.uid, 2) == 0}
            deadline = time.monotonic() + 240
            while not _done(out) & mine and victim.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=30)
            code, text = _finish(other)
            assert code == 0, text
            states = {s["shard"]: s["state"] for s in _shards(_status(out))}
            assert states["1/2"] == "done"
            assert states["0/2"] != "done"
            code, text = _finish(_run(job, out, base_url, "--shard", "0/2"))
            assert code == 0, text
    finally:
        for proc in procs:  # never leave a shard running (or its pipes open) behind a failure
            if proc.poll() is None:
                proc.kill()
            if proc.stdout is not None and not proc.stdout.closed:
                proc.communicate()
    _assert_complete(out, catalog)
    status = _status(out)
    assert status["pending"] == 0
    assert {s["state"] for s in _shards(status)} == {"done"}


@pytest.mark.parametrize("value", ["3/2", "-1/4", "a/b", "0/0", "1", "2/2"])
def test_a_bad_shard_value_exits_2_before_any_traffic(tmp_path: Path, value: str) -> None:
    job = _job(tmp_path)
    out = tmp_path / "out"
    code, text = _finish(_run(job, out, "http://127.0.0.1:9/nbia-api/services/v4/", "--shard", value))
    assert code == 2, text
    assert "--shard" in text
    assert not out.exists()
