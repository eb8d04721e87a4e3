"""s3:// destinations end to end against moto's S3 server on loopback (started by the tests).

Each test runs the real engine against the fake NBIA server into a bucket and checks the end
state a data-lake user sees: which keys exist, their content, the journal in the bucket, open
multipart uploads, and the messages (never a credential).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.errors import (
    EXIT_BAD_INPUT,
    EXIT_FATAL,
    BucketMissingError,
    InputError,
    ObjectStoreAuthError,
    TciaFetchError,
)
from tcia_fetch.testing import Catalog, FakeNBIA
from tcia_fetch.testing.s3 import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    CANARY_TOKEN,
    Fault,
    FaultProxy,
    MotoS3,
    list_keys,
    open_uploads,
)

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=4, integrity_attempts=3, base_s=0.01, cap_s=0.05, floor_s=0.0)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(
        seed=23,
        collections=1,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(3, 6),
        instance_bytes=(6_000, 20_000),
    )


_bucket_counter = iter(range(10_000))


def write_job(tmp_path: Path, uids: list[str]) -> Path:
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[download]\nconcurrency = 3\n[series]\nuids = [{listed}]\n")
    return job


async def run_to(tmp_path: Path, catalog: Catalog, out: str, uids: list[str], keep: str = "tar.zst") -> Any:
    async with FakeNBIA(catalog).serve() as server:
        return await fetch(
            write_job(tmp_path, uids),
            RunOptions(out=out, base_url=server.base_url, keep=keep, layout="flat"),  # type: ignore[arg-type]
            retry_policy=FAST,
        )


def tar_members(data: bytes) -> dict[str, bytes]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def series_keys(keys: dict[str, int], prefix: str) -> set[str]:
    return {key for key in keys if key.startswith(prefix + "/") and "/.tcia-fetch/" not in key}


async def test_tar_zst_series_land_whole_in_the_bucket_with_state_catalog_and_csv(
    tmp_path: Path, catalog: Catalog, moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = [series.uid for series in catalog.series[:4]]
    report = await run_to(tmp_path, catalog, f"s3://{bucket}/tcia", uids)
    assert (report.done, report.failed, report.exit_code) == (4, 0, 0), report.failures
    client = moto_s3.client()
    keys = list_keys(client, bucket)
    archives = {f"tcia/{uid}/{uid}.tar.zst" for uid in uids}
    assert archives <= set(keys)
    assert series_keys(keys, "tcia") - archives == {
        "tcia/metadata.csv",
        "tcia/catalog.parquet",
        "tcia/instances.parquet",
    }
    for series in catalog.series[:4]:
        data = client.get_object(Bucket=bucket, Key=f"tcia/{series.uid}/{series.uid}.tar.zst")["Body"].read()
        members = tar_members(data)
        dicom = {name: body for name, body in members.items() if name.endswith(".dcm")}
        assert len(dicom) == series.instance_count
        sums = members["MD5SUMS"].decode()
        for name, body in dicom.items():
            assert f"{hashlib.md5(body).hexdigest()}  {name}" in sums
    # The run state lives in the bucket: a snapshot after compaction, the lock released, reports.
    state = {key for key in keys if key.startswith("tcia/.tcia-fetch/")}
    assert "tcia/.tcia-fetch/snapshot.jsonl.zst" in state
    assert "tcia/.tcia-fetch/lock" not in state
    assert "tcia/.tcia-fetch/last-report.json" in state
    # The plan `status` counts from: its digests too, or a bucket's status shows nothing done.
    assert {"tcia/.tcia-fetch/last-plan.json", "tcia/.tcia-fetch/last-plan.digests"} <= state
    last_report = client.get_object(Bucket=bucket, Key="tcia/.tcia-fetch/last-report.json")["Body"].read()
    last = json.loads(last_report)
    assert last["done"] == 4
    assert open_uploads(client, bucket) == []  # archives above 8 KiB went up by multipart, all completed
    # A rerun from another machine (a fresh work dir) finds everything done and fetches nothing.
    monkeypatch.setenv("TCIA_FETCH_WORK_DIR", str(tmp_path / "another-machine"))
    again = await run_to(tmp_path, catalog, f"s3://{bucket}/tcia", uids)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)


async def test_keep_zip_stores_the_archive_as_served(
    tmp_path: Path, catalog: Catalog, moto_s3: MotoS3, bucket: str
) -> None:
    uid = catalog.series[0].uid
    report = await run_to(tmp_path, catalog, f"s3://{bucket}", [uid], keep="zip")
    assert report.exit_code == 0, report.failures
    keys = list_keys(moto_s3.client(), bucket)
    assert f"{uid}/{uid}.zip" in keys


async def test_keep_dicom_is_refused_for_a_bucket_before_any_traffic(
    tmp_path: Path, catalog: Catalog, moto_s3: MotoS3, bucket: str
) -> None:
    with pytest.raises(InputError, match=r"tar\.zst") as caught:
        await run_to(tmp_path, catalog, f"s3://{bucket}/x", [catalog.series[0].uid], keep="dicom")
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert list_keys(moto_s3.client(), bucket) == {}


async def test_missing_bucket_is_fatal_before_any_download(
    tmp_path: Path, catalog: Catalog, moto_s3: MotoS3, bucket: str
) -> None:
    fake = FakeNBIA(catalog)
    async with fake.serve() as server:
        with pytest.raises(BucketMissingError) as caught:
            await fetch(
                write_job(tmp_path, [catalog.series[0].uid]),
                RunOptions(out="s3://no-such-bucket-here/x", base_url=server.base_url, keep="tar.zst"),
                retry_policy=FAST,
            )
        assert not any("getImage" in entry.path for entry in server.request_log), "downloaded first"
    assert caught.value.exit_code == EXIT_FATAL
    assert "no-such-bucket-here" in str(caught.value)


async def test_refused_credentials_are_fatal_with_a_clear_message_and_no_secret(
    tmp_path: Path, catalog: Catalog, moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = FaultProxy(moto_s3.endpoint, [Fault("403", "HEAD", f"/{bucket}", times=100)])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        with pytest.raises(ObjectStoreAuthError) as caught:
            await run_to(tmp_path, catalog, f"s3://{bucket}/x", [catalog.series[0].uid])
    finally:
        proxy.stop()
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_FATAL
    assert "refused the credentials" in message
    for secret in (CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN):
        assert secret not in message


@pytest.mark.parametrize(
    "fault",
    [
        Fault("503", "PUT", "partNumber=", times=2),
        Fault("500", "PUT", "partNumber=", times=2),
        Fault("reset", "PUT", "partNumber=", times=1),
        Fault("500", "POST", "uploadId=", times=2),
        Fault("503", "PUT", "/.tcia-fetch/journal/", times=1),
    ],
    ids=["slowdown-part", "500-part", "reset-mid-part", "complete-fails-twice", "slowdown-journal"],
)
async def test_transient_store_faults_are_retried_and_end_verified(
    tmp_path: Path,
    catalog: Catalog,
    moto_s3: MotoS3,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    fault: Fault,
) -> None:
    proxy = FaultProxy(moto_s3.endpoint, [fault])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    uids = [series.uid for series in catalog.series[:3]]
    try:
        report = await run_to(tmp_path, catalog, f"s3://{bucket}/p", uids)
    finally:
        proxy.stop()
    assert fault.hits == fault.times, "the fault never fired"
    assert (report.done, report.failed, report.exit_code) == (3, 0, 0), report.failures
    client = moto_s3.client()
    keys = list_keys(client, bucket)
    for series in catalog.series[:3]:
        data = client.get_object(Bucket=bucket, Key=f"p/{series.uid}/{series.uid}.tar.zst")["Body"].read()
        assert len([n for n in tar_members(data) if n.endswith(".dcm")]) == series.instance_count
    assert open_uploads(client, bucket) == []
    assert "p/.tcia-fetch/lock" not in keys


async def test_a_persistently_failing_complete_leaves_nothing_visible_and_no_open_upload(
    tmp_path: Path, catalog: Catalog, moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = FaultProxy(moto_s3.endpoint, [Fault("500", "POST", "uploadId=", times=10_000)])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    uid = catalog.series[0].uid
    try:
        with pytest.raises(TciaFetchError) as caught:
            await run_to(tmp_path, catalog, f"s3://{bucket}/p", [uid])
    finally:
        proxy.stop()
    assert caught.value.exit_code == EXIT_FATAL
    # The error names the real cause; the run did not go on to fight the store for its catalog
    # (that used to take 30 s of retries and replace this message with the catalog's).
    assert "cannot complete upload" in str(caught.value) and uid in str(caught.value)
    client = moto_s3.client()
    assert not [key for key in list_keys(client, bucket) if key.endswith(".tar.zst")]
    assert "p/catalog.parquet" not in list_keys(client, bucket)
    assert open_uploads(client, bucket) == []
