"""The CLI with s3:// destinations, as a user meets it: moto's S3 server on loopback.

Covers the URL rule (anything but s3:// or a path is exit 2, never a local folder), and ``run``,
``status`` and ``verify`` on a bucket (verify re-reads and re-hashes; damage is found and the next
run repairs it). One ``run`` is a real process (its output is searched for the credentials); the
other commands go through the same click entry point in this process, which gives the same exit
codes, output and bucket at a fraction of the cost (the suite's time budget). SIGKILLs during
uploads (nothing partial visible, nothing fetched twice, no upload left open) are the S3 part of
the reliability campaign: ``tests/reliability/test_s3_campaign.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tcia_fetch.cli.main import cli as cli_group
from tcia_fetch.testing import Catalog, serve_in_background
from tcia_fetch.testing.s3 import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    CANARY_TOKEN,
    Fault,
    FaultProxy,
    MotoS3,
    list_keys,
)

from .fixtures import cli

pytestmark = pytest.mark.e2e

SEED = 53


def catalog() -> Catalog:
    return Catalog.generate(
        seed=SEED,
        collections=1,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(3, 6),
        instance_bytes=(30_000, 60_000),
    )


def run_cli(*args: str, timeout: float = 180, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    with proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def invoke(*args: str) -> Result:
    """The CLI in this process (the environment is the test's: moto's endpoint and canaries)."""
    return CliRunner().invoke(cli_group, list(args), catch_exceptions=False)


def manifest(tmp_path: Path, uids: list[str]) -> Path:
    path = tmp_path / "list.tcia"
    path.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    return path


@pytest.mark.parametrize("out", ["s3:/lake/tcia", "gs://lake/tcia", "http://lake/tcia", "file:///tmp/x"])
def test_out_with_an_unsupported_url_exits_2_and_creates_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    # Regression: `--out s3://lake/tcia` used to become a local folder `s3:/lake/tcia`.
    job = manifest(tmp_path, [catalog().series[0].uid])
    monkeypatch.chdir(tmp_path)
    result = invoke("run", str(job), "--out", out, "--base-url", "http://127.0.0.1:9/")
    assert result.exit_code == 2, result.output
    assert "--out" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.tcia"]


def test_job_file_dest_with_an_unsupported_scheme_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'[output]\ndest = "gs://lake/tcia"\n[series]\nuids = ["{catalog().series[0].uid}"]\n')
    monkeypatch.chdir(tmp_path)
    result = invoke("run", str(job), "--base-url", "http://127.0.0.1:9/")
    assert result.exit_code == 2
    assert "output.dest" in result.stderr and "gs" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.toml"]


def test_run_status_verify_on_a_bucket_find_damage_and_repair(
    tmp_path: Path, moto_s3: MotoS3, bucket: str
) -> None:
    uids = [entry.uid for entry in catalog().series[:3]]
    job = manifest(tmp_path, uids)
    dest = f"s3://{bucket}/tcia"
    with serve_in_background(catalog=catalog()) as server:
        base_url = server.base_url
        first = run_cli("run", str(job), "--out", dest, "--base-url", base_url, "--keep", "tar.zst")
        assert first.returncode == 0, first.stderr
        for secret in (CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN):
            assert secret not in first.stdout + first.stderr
        status = invoke("status", dest, "--format", "json")
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["done"] == 3
        assert invoke("verify", dest).exit_code == 0
        # Damage one archive in place, same size: only re-reading and re-hashing can notice.
        client = moto_s3.client()
        key = next(k for k in list_keys(client, bucket) if k.endswith(".tar.zst"))
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        damaged = invoke("verify", dest, "--format", "json")
        assert damaged.exit_code == 1, damaged.output
        rows = json.loads(damaged.stdout)["damaged"]
        assert len(rows) == 1 and "MD5" in rows[0]["reason"]
        repaired = invoke("run", str(job), "--out", dest, "--base-url", base_url, "--keep", "tar.zst")
        assert repaired.exit_code == 0, repaired.output
        assert invoke("verify", dest).exit_code == 0
    for secret in (CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN):
        assert secret not in status.output + damaged.output + repaired.output


def test_refused_credentials_and_a_missing_bucket_exit_3_before_any_download(
    tmp_path: Path, moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = manifest(tmp_path, [entry.uid for entry in catalog().series[:2]])
    proxy = FaultProxy(moto_s3.endpoint, [Fault("403", "HEAD", f"/{bucket}", times=100)])
    try:
        with serve_in_background(catalog=catalog()) as server:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the store refuses these keys
            args = ["--base-url", server.base_url, "--keep", "tar.zst"]
            refused = invoke("run", str(job), "--out", f"s3://{bucket}/x", *args)
            monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
            missing = invoke("run", str(job), "--out", "s3://no-such-lake/x", *args)
            downloads = [entry for entry in server.fake.request_log if entry.endpoint == "getImage"]
    finally:
        proxy.stop()
    assert refused.exit_code == 3, refused.output
    assert "refused the credentials" in refused.stderr and bucket in refused.stderr
    assert missing.exit_code == 3, missing.output
    assert "no-such-lake" in missing.stderr
    assert downloads == [], "a series was downloaded before the destination was known to work"
    for secret in (CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN):
        assert secret not in refused.output + missing.output
    assert list_keys(moto_s3.client(), bucket) == {}
