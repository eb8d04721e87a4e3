"""Shards of one job on one bucket, one of them SIGKILLed mid-run and started again.

The directory twin is :func:`tcia_fetch.campaign.scaleout.run_shard_kills`; this one checks what
a lister of the bucket sees, because a bucket has no rename and its locks, journal segments and
multipart uploads are objects: N ``tcia-fetch run --shard K/N --out s3://... --keep tar.zst``
processes write one prefix at once, and ``kills`` times a shard that has committed part of its
share is SIGKILLed (so it may die with an upload open) and started again while the others go on.

Judged from the bucket and the fake server's request log (each must be 0 / empty):

* every series of the job is stored exactly once, as a whole archive (``lost``,
  ``unverified_published`` for an archive visible but not whole);
* a rerun fetches none of the series its shard had committed before it started;
* no multipart upload is left open and no lock object is left behind (``leftovers``);
* metadata.csv in the bucket lists every series once; ``status`` shows the whole job done and
  every shard done; ``verify`` (which re-reads and re-hashes every archive) passes.

:func:`run_bucket_dask_worker_kill` is the bucket twin of
:func:`tcia_fetch.campaign.scaleout.run_dask_worker_kill`: a ``--scheduler`` run onto the bucket
whose busiest worker process is SIGKILLed while uploads are open; judged the same way, and its
rerun must fetch nothing. The workers read the loopback S3's endpoint and canary credentials from
their own environment (set by their nanny), as real workers do; none travels in a task.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tcia_fetch.campaign.local import LocalOutcome
from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.campaign.scaleout import kill_busiest_worker, pick_victim, scaleout_catalog, wait_for_shards
from tcia_fetch.plan.shard import shard_of
from tcia_fetch.series.archive import check_tar_zst
from tcia_fetch.testing import FakeNBIA, LoadModel

__all__ = ["run_bucket_dask_worker_kill", "run_bucket_shard_kills"]

_RUN_TIMEOUT_S = 300.0
#: How long the Dask kill waits for an upload to be open before it kills mid-series anyway.
_OPEN_UPLOAD_WAIT_S = 2.0
_PREFIX = "lake"


def _write_job(workdir: Path, uids: list[str]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    job = workdir / "list.tcia"
    job.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    return job


@contextlib.contextmanager
def _moto_bucket(workdir: Path, bucket: str) -> Iterator[tuple[Any, dict[str, str], str]]:
    """moto on loopback with ``bucket`` in it: a boto3 client, the CLI's AWS environment (canary
    credentials, never real ones) and the destination URL."""
    from tcia_fetch.testing.s3 import MotoS3, s3_env

    moto = MotoS3()
    try:
        client = moto.client()
        client.create_bucket(Bucket=bucket)
        yield client, s3_env(moto.endpoint, workdir / "work", workdir), f"s3://{bucket}/{_PREFIX}"
    finally:
        moto.stop()


def run_bucket_shard_kills(workdir: Path, *, shards: int = 3, kills: int = 1, seed: int = 7) -> LocalOutcome:
    """``shards`` shard processes on one bucket prefix, one SIGKILLed mid-share and rerun; one
    kill per round, each round a fresh bucket (as the directory twin does)."""
    from tcia_fetch.testing.s3 import list_keys, open_uploads

    outcome = LocalOutcome(f"{shards} shards on one bucket")
    rng = random.Random(seed)
    catalog = scaleout_catalog()
    uids = [entry.uid for entry in catalog.series]
    shares = {k: {uid for uid in uids if shard_of(uid, shards) == k} for k in range(shards)}
    job = _write_job(workdir, uids)
    landed = 0
    # moto keeps its buckets per process, across servers: a name of this call's own.
    tag = secrets.token_hex(4)
    with _moto_bucket(workdir, f"shards-{tag}-0") as (client, env, _):
        fake = FakeNBIA(catalog, load=LoadModel(bytes_per_s_per_connection=150_000))
        with serve_in_thread(fake) as server:
            for round_number in range(max(1, kills)):
                bucket = f"shards-{tag}-{round_number}"
                if round_number:
                    client.create_bucket(Bucket=bucket)
                dest = f"s3://{bucket}/{_PREFIX}"

                def committed(bucket: str = bucket) -> Counter[str]:
                    return _committed(client, bucket, list_keys)

                def start(k: int, dest: str = dest) -> subprocess.Popen[bytes]:
                    args = [
                        "run",
                        str(job),
                        "--out",
                        dest,
                        "--base-url",
                        server.base_url,
                        "--keep",
                        "tar.zst",
                    ]
                    args += ["--concurrency", str(2 * shards), "--quiet", "--shard", f"{k}/{shards}"]
                    return start_cli(args, env=env, stderr=subprocess.PIPE)

                procs = {k: start(k) for k in range(shards)}
                victim = pick_victim(procs, shares, lambda: set(committed()), rng) if kills else None
                if victim is not None:
                    time.sleep(rng.uniform(0.0, 0.3))  # the rest of its share is still streaming
                    if procs[victim].poll() is None:
                        procs[victim].send_signal(signal.SIGKILL)
                        landed += 1
                        stored, open_now = (
                            len(set(committed()) & shares[victim]),
                            len(open_uploads(client, bucket)),
                        )
                        outcome.messages.append(
                            f"killed shard {victim}/{shards} with {stored} of {len(shares[victim])} "
                            f"committed and {open_now} upload(s) open"
                        )
                    procs[victim].communicate(timeout=_RUN_TIMEOUT_S)
                    outcome.loss.unverified_published.extend(_broken_archives(client, bucket, list_keys))
                    before, start_at = set(committed()) & shares[victim], len(fake.request_log)
                    procs[victim] = start(victim)
                    procs[victim].communicate(timeout=_RUN_TIMEOUT_S)
                    refetched = {
                        str(entry.query.get("SeriesInstanceUID"))
                        for entry in fake.request_log[start_at:]
                        if entry.endpoint == "getImage" and entry.query.get("SeriesInstanceUID") in before
                    }
                    if refetched:
                        outcome.problems.append(
                            f"the rerun of shard {victim} fetched {len(refetched)} committed series"
                        )
                    procs[victim] = start(victim)  # finished: this run must find its share done
                wait_for_shards(outcome, procs, shards)
                _judge_bucket(outcome, client, bucket, uids, committed(), list_keys, open_uploads)
                _judge_commands(outcome, dest, env, shards, len(uids))
    outcome.name += f", {landed} shard kill(s)"
    return outcome


def run_bucket_dask_worker_kill(workdir: Path, *, workers: int = 2, concurrency: int = 2) -> LocalOutcome:
    """A Dask run onto one bucket prefix whose busiest worker is SIGKILLed mid-series, then rerun."""
    from tcia_fetch.cluster._distributed import local_cluster  # Dask is imported when it starts
    from tcia_fetch.testing.s3 import list_keys, open_uploads

    outcome = LocalOutcome(f"dask on a bucket: {workers} workers, one killed mid-series")
    catalog = scaleout_catalog(series_per_study=2)
    uids = [entry.uid for entry in catalog.series]
    job = _write_job(workdir, uids)
    bucket = f"dask-kill-{secrets.token_hex(4)}"  # moto keeps buckets per process, across servers
    with _moto_bucket(workdir, bucket) as (client, env, dest):
        fake = FakeNBIA(catalog, load=LoadModel(bytes_per_s_per_connection=150_000))
        # More threads per worker than the cap: only the cluster-wide semaphore can hold it; a
        # killed worker's lease returns after the (shortened) lease timeout.
        with (
            serve_in_thread(fake) as server,
            local_cluster(
                workers=workers, threads_per_worker=concurrency + 1, lease_timeout_s=4.0, env=env
            ) as cluster,
        ):
            args = ["run", str(job), "--out", dest, "--base-url", server.base_url, "--keep", "tar.zst"]
            args += ["--concurrency", str(concurrency), "--scheduler", cluster.address, "--quiet"]
            run = start_cli(args, env=env, stderr=subprocess.PIPE)
            # An upload is open only while a series' archive streams (about an eighth of this
            # run's time): the kill waits for one at most _OPEN_UPLOAD_WAIT_S after the first
            # commit, then lands mid-series anyway, so a loaded machine cannot make it miss.
            first_commit: list[float] = []

            def ready() -> bool:
                if fake.stats().active_downloads == 0 or not _committed(client, bucket, list_keys):
                    return False
                first_commit[:] = first_commit or [time.monotonic()]
                waited = time.monotonic() - first_commit[0] > _OPEN_UPLOAD_WAIT_S
                return waited or bool(open_uploads(client, bucket))

            killed = kill_busiest_worker(
                cluster,
                outcome,
                ready=ready,
                running=lambda: run.poll() is None,
                progress=lambda: (
                    f"{len(_committed(client, bucket, list_keys))} committed and "
                    f"{len(open_uploads(client, bucket))} upload(s) open"
                ),
            )
            if killed:
                outcome.loss.unverified_published.extend(_broken_archives(client, bucket, list_keys))
            _, err = run.communicate(timeout=_RUN_TIMEOUT_S)
            outcome.exit_codes.append(run.returncode)
            if run.returncode != 0:
                outcome.problems.append(f"the run exited {run.returncode}: {err.decode()[-300:]!r}")
            # Nothing left to do: the rerun downloads no series (and starts no cluster work).
            start_at = len(fake.request_log)
            again = start_cli(args, env=env, stderr=subprocess.PIPE)
            _, err = again.communicate(timeout=_RUN_TIMEOUT_S)
            if again.returncode != 0:
                outcome.problems.append(f"the rerun exited {again.returncode}: {err.decode()[-300:]!r}")
            refetched = [entry for entry in fake.request_log[start_at:] if entry.endpoint == "getImage"]
            if refetched:
                outcome.problems.append(f"the rerun fetched {len(refetched)} series again")
        peak = fake.stats().peak_concurrent_downloads
        outcome.messages.append(f"peak downloads in flight {peak} (cap {concurrency})")
        if peak > concurrency:
            outcome.problems.append(
                f"{peak} downloads in flight at once, above the cluster-wide cap {concurrency}"
            )
        stored = _committed(client, bucket, list_keys)
        _judge_bucket(outcome, client, bucket, uids, stored, list_keys, open_uploads)
        # Every worker's own staging dir: removed when it closed, or (the killed one's) by the client.
        outcome.loss.leftovers.extend(str(path) for path in (workdir / "work").glob("*/dask-*"))
        _judge_commands(outcome, dest, env, 0, len(uids))
    return outcome


def _committed(client: Any, bucket: str, list_keys: Any) -> Counter[str]:
    """Series UID -> how many archives of it a lister of the prefix sees."""
    return Counter(
        key.rsplit("/", 1)[-1].removesuffix(".tar.zst")
        for key in list_keys(client, bucket, _PREFIX + "/")
        if key.endswith(".tar.zst")
    )


def _broken_archives(client: Any, bucket: str, list_keys: Any) -> list[str]:
    """Archives a lister sees under the prefix that are not whole (never allowed, even mid-kill)."""
    broken = []
    for key in list_keys(client, bucket, _PREFIX + "/"):
        if key.endswith(".tar.zst"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            if check_tar_zst(iter([body])).problems:
                broken.append(key)
    return broken


def _judge_bucket(
    outcome: LocalOutcome,
    client: Any,
    bucket: str,
    uids: list[str],
    stored: Counter[str],
    list_keys: Any,
    open_uploads: Any,
) -> None:
    outcome.loss.lost.extend(sorted(set(uids) - set(stored)))
    outcome.problems.extend(f"{uid} is stored {n} times" for uid, n in stored.items() if n > 1)
    outcome.loss.unverified_published.extend(_broken_archives(client, bucket, list_keys))
    outcome.loss.leftovers.extend(f"open upload {key}" for key in open_uploads(client, bucket))
    keys = list_keys(client, bucket, _PREFIX + "/.tcia-fetch/")
    outcome.loss.leftovers.extend(key for key in keys if key.rsplit("/", 1)[-1].startswith("lock."))
    try:
        text = client.get_object(Bucket=bucket, Key=f"{_PREFIX}/metadata.csv")["Body"].read().decode()
    except Exception as exc:  # any failure to read it is the finding
        outcome.problems.append(f"metadata.csv unreadable in the bucket: {exc}")
        return
    rows = Counter(row["Series UID"] for row in csv.DictReader(io.StringIO(text)))
    outcome.problems.extend(f"metadata.csv lists {uid} {n} times" for uid, n in rows.items() if n > 1)
    missing = sorted(set(uids) - set(rows))
    if missing:
        outcome.problems.append(f"metadata.csv lacks {len(missing)} series, e.g. {missing[0]}")


def _judge_commands(outcome: LocalOutcome, dest: str, env: dict[str, str], shards: int, series: int) -> None:
    """``status`` shows the whole job and every shard done; ``verify`` re-hashes and passes."""
    shown = start_cli(["status", dest, "--format", "json"], env=env, stdout=subprocess.PIPE)
    text, _ = shown.communicate(timeout=_RUN_TIMEOUT_S)
    try:
        document = json.loads(text)
    except ValueError:
        outcome.problems.append(f"status exited {shown.returncode} without a JSON document")
    else:
        figures = (document.get("done"), document.get("pending"), document.get("failed"))
        if figures != (series, 0, 0):
            outcome.problems.append(f"status shows done, pending, failed = {figures}, not ({series}, 0, 0)")
        states = [row.get("state") for row in document.get("shards", [])]
        if states != ["done"] * shards:
            outcome.problems.append(f"status shows the shards as {states}")
    checked = start_cli(["verify", dest], env=env).wait(timeout=_RUN_TIMEOUT_S)
    if checked != 0:
        outcome.problems.append(f"verify of the bucket exited {checked}")
