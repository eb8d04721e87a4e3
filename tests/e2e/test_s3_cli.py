"""The CLI with s3:// destinations, as a user meets it: moto's S3 server on loopback, real processes.

Covers the URL rule (anything but s3:// or a path is exit 2, never a local folder), ``status``
and ``verify`` on a bucket (verify re-reads and re-hashes; damage is found and the next run
repairs it), and SIGKILLs during uploads: nothing partial is ever visible under a final key, a
rerun never re-fetches committed series, and the multipart uploads dead runs left are aborted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_fetch.series.archive import check_tar_zst
from tcia_fetch.testing import Catalog
from tcia_fetch.testing.s3 import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    CANARY_TOKEN,
    MotoS3,
    list_keys,
    open_uploads,
    s3_env,
)

from .fixtures import cli, fake_server_process

pytestmark = pytest.mark.e2e

SEED = 53
SIZING = [
    "--seed",
    str(SEED),
    "--collections",
    "1",
    "--patients-per-collection",
    "2",
    "--series-per-study",
    "3",
    "--instances-per-series",
    "3,6",
    "--instance-bytes",
    "30000,60000",
]


def catalog() -> Catalog:
    return Catalog.generate(
        seed=SEED,
        collections=1,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(3, 6),
        instance_bytes=(30_000, 60_000),
    )


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def lake(moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"lake-{os.getpid()}-{random.randrange(1 << 30)}"
    moto_s3.client().create_bucket(Bucket=name)
    for key, value in s3_env(moto_s3.endpoint, tmp_path / "work", tmp_path).items():
        monkeypatch.setenv(key, value)
    return name


def run_cli(*args: str, timeout: float = 180, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    with proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def manifest(tmp_path: Path, uids: list[str]) -> Path:
    path = tmp_path / "list.tcia"
    path.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    return path


@pytest.mark.parametrize("out", ["s3:/lake/tcia", "gs://lake/tcia", "http://lake/tcia", "file:///tmp/x"])
def test_out_with_an_unsupported_url_exits_2_and_creates_no_folder(tmp_path: Path, out: str) -> None:
    # Regression: `--out s3://lake/tcia` used to become a local folder `s3:/lake/tcia`.
    job = manifest(tmp_path, [catalog().series[0].uid])
    result = run_cli("run", str(job), "--out", out, "--base-url", "http://127.0.0.1:9/", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--out" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.tcia"]


def test_job_file_dest_with_an_unsupported_scheme_exits_2(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'[output]\ndest = "gs://lake/tcia"\n[series]\nuids = ["{catalog().series[0].uid}"]\n')
    result = run_cli("run", str(job), "--base-url", "http://127.0.0.1:9/", cwd=tmp_path)
    assert result.returncode == 2
    assert "output.dest" in result.stderr and "gs" in result.stderr


def test_run_status_verify_on_a_bucket_find_damage_and_repair(
    tmp_path: Path, moto_s3: MotoS3, lake: str
) -> None:
    uids = [entry.uid for entry in catalog().series[:3]]
    job = manifest(tmp_path, uids)
    dest = f"s3://{lake}/tcia"
    with fake_server_process(tmp_path, SIZING) as base_url:
        first = run_cli("run", str(job), "--out", dest, "--base-url", base_url, "--keep", "tar.zst")
        assert first.returncode == 0, first.stderr
        for secret in (CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN):
            assert secret not in first.stdout + first.stderr
        status = run_cli("status", dest, "--format", "json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["done"] == 3
        assert run_cli("verify", dest).returncode == 0
        # Damage one archive in place, same size: only re-reading and re-hashing can notice.
        client = moto_s3.client()
        key = next(k for k in list_keys(client, lake) if k.endswith(".tar.zst"))
        data = bytearray(client.get_object(Bucket=lake, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=lake, Key=key, Body=bytes(data))
        damaged = run_cli("verify", dest, "--format", "json")
        assert damaged.returncode == 1, damaged.stderr
        rows = json.loads(damaged.stdout)["damaged"]
        assert len(rows) == 1 and "MD5" in rows[0]["reason"]
        repaired = run_cli("run", str(job), "--out", dest, "--base-url", base_url, "--keep", "tar.zst")
        assert repaired.returncode == 0, repaired.stderr
        assert run_cli("verify", dest).returncode == 0


def _visible_archives_are_whole(client: object, bucket: str) -> int:
    count = 0
    for key in list_keys(client, bucket):
        if key.endswith(".tar.zst"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
            assert check_tar_zst(iter([body])).problems == (), f"partial or corrupt archive visible: {key}"
            count += 1
    return count


def test_sigkill_during_uploads_then_rerun_commits_everything_once(
    tmp_path: Path, moto_s3: MotoS3, lake: str
) -> None:
    kills = int(os.environ.get("TCIA_FETCH_S3_KILLS", "3"))
    rng = random.Random(int(os.environ.get("TCIA_FETCH_KILL_SEED", "5")))
    uids = [entry.uid for entry in catalog().series]
    job = manifest(tmp_path, uids)
    dest = f"s3://{lake}/k"
    client = moto_s3.client()
    args = ["run", str(job), "--out", dest, "--keep", "tar.zst", "--quiet"]
    with fake_server_process(tmp_path, [*SIZING, "--rate-bytes-per-s", "600000"]) as base_url:
        for _ in range(kills):
            proc = cli(*args, "--base-url", base_url, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 2.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            _visible_archives_are_whole(client, lake)
        final = run_cli(*args, "--base-url", base_url, "--report", str(tmp_path / "final.json"))
        assert final.returncode == 0, final.stderr
        committed_before = json.loads((tmp_path / "final.json").read_text())["skipped"]
        again = run_cli(*args, "--base-url", base_url, "--report", str(tmp_path / "again.json"))
        assert again.returncode == 0, again.stderr
    assert _visible_archives_are_whole(client, lake) == len(uids)
    assert open_uploads(client, lake) == [], "a dead run's multipart upload was left open"
    report = json.loads((tmp_path / "again.json").read_text())
    assert (report["done"], report["skipped"]) == (0, len(uids)), "a committed series was fetched again"
    assert committed_before <= len(uids)
    assert run_cli("verify", dest).returncode == 0
