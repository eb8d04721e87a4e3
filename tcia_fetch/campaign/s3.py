"""The S3 part of the campaign: object-store faults and SIGKILLs against an s3:// destination.

moto's S3 server runs on loopback behind a fault proxy (:mod:`tcia_fetch.testing.s3`) that
injects, on a seeded schedule, 503 SlowDown and 500 on parts, connection resets mid-part,
failing CompleteMultipartUploads and a 503 on a journal append. The real CLI is started with
``--out s3://... --keep tar.zst`` and SIGKILLed, every kill followed by a rerun (the next kill's
run). Kills alternate between two kinds: in the middle of an upload, first (the proxy holds a
CompleteMultipartUpload, and the CLI is killed once it has committed a series and the bucket
lists an open multipart upload), and at a random moment. After every kill the bucket is
inspected as a lister would see it. The kills go in rounds: once the job is stored whole under a
round's prefix, a run left alone closes the round (it must store nothing, fetch nothing, leave no
upload open, and ``verify`` must pass), and the next kills go to a fresh prefix, so that no kill
lands on a run with nothing left to do. At the end the last round is closed the same way, and
the job is run once more.

Data lost (each must be 0): an archive visible under a final key that is not whole
(``partial_visible``); a series of the job not stored whole when a round closes (``lost``); a
committed series fetched again (``refetched``: every ``getImage`` a run sends for a series whose
archive was already visible under its prefix when that run started, counted over every run after
the first of a round); and multipart uploads left open after a round's closing run
(``open_uploads``; the uploads the kills cut open must all have been aborted by then).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.series.archive import check_tar_zst
from tcia_fetch.testing import Catalog, FakeNBIA, LoadModel

__all__ = ["S3Result", "run_s3_campaign"]

_RUN_TIMEOUT_S = 300.0
#: How long the proxy holds a CompleteMultipartUpload for a mid-upload kill.
_STALL_S = 3.0
#: How long a mid-upload kill waits for an upload to open before it kills anyway.
_OPEN_WAIT_S = 60.0


@dataclass
class S3Result:
    kills: int = 0
    series: int = 0
    faults_injected: int = 0
    partial_visible: int = 0
    lost: int = 0
    refetched: int = 0
    open_uploads: int = 0
    #: Multipart uploads found open right after a kill (kills that landed mid-upload); the next
    #: run must abort them.
    uploads_cut_by_kills: int = 0
    #: Kills aimed at an open upload (the other kills land at random moments).
    mid_upload_kills: int = 0
    #: Rounds completed: the job stored whole under one prefix, then a clean rerun checked; the
    #: next kills go to a fresh prefix, so that no kill lands on a run with nothing left to do.
    rounds: int = 0
    #: Series whose archive was visible when a rerun started, summed over the reruns: what the
    #: ``refetched`` count is measured against (0 would mean the check never had a chance).
    committed_at_rerun: int = 0
    problems: list[str] = field(default_factory=list)

    def data_lost(self) -> dict[str, int]:
        return {
            "s3_partial_visible": self.partial_visible,
            "s3_lost": self.lost,
            "s3_refetched": self.refetched,
            "s3_open_uploads": self.open_uploads,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "series": self.series,
            "faults_injected": self.faults_injected,
            "uploads_cut_by_kills": self.uploads_cut_by_kills,
            "mid_upload_kills": self.mid_upload_kills,
            "rounds": self.rounds,
            "committed_at_rerun": self.committed_at_rerun,
            **self.data_lost(),
            "problems": self.problems,
        }


def _catalog(seed: int) -> Catalog:
    return Catalog.generate(
        seed=seed,
        collections=1,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(3, 6),
        instance_bytes=(30_000, 60_000),
    )


def run_s3_campaign(
    root: Path, *, kills: int, seed: int = 7, progress: Callable[[str], None] | None = None
) -> S3Result:
    """Faults and ``kills`` SIGKILLs against a moto bucket; see the module docstring."""
    from tcia_fetch.testing.s3 import Fault, FaultProxy, MotoS3, list_keys, open_uploads, s3_env

    say = progress or (lambda _message: None)
    rng = random.Random(seed)
    result = S3Result()
    catalog = _catalog(seed)
    result.series = len(catalog.series)
    root.mkdir(parents=True, exist_ok=True)
    job = root / "list.tcia"
    job.write_text(
        "manifestVersion=3.0\nListOfSeriesToDownload=\n" + "\n".join(s.uid for s in catalog.series) + "\n"
    )
    moto = MotoS3()
    faults = [
        Fault("503", "PUT", "partNumber=", times=rng.randint(1, 3)),
        Fault("500", "PUT", "partNumber=", times=rng.randint(1, 3)),
        Fault("reset", "PUT", "partNumber=", times=rng.randint(1, 2)),
        Fault("500", "POST", "uploadId=", times=rng.randint(1, 2)),
        Fault("503", "PUT", "/.tcia-fetch/journal/", times=1),
    ]
    proxy = FaultProxy(moto.endpoint, faults)
    try:
        client = moto.client()
        bucket = f"campaign-{seed}-{os.getpid()}"
        client.create_bucket(Bucket=bucket)
        env = s3_env(proxy.endpoint, root / "work", root)
        fake = FakeNBIA(catalog, load=LoadModel(bytes_per_s_per_connection=600_000))
        everything = {series.uid for series in catalog.series}
        #: The prefix of the current round: once a round's job is complete, the next kills go to a
        #: fresh prefix, so that every kill lands on a run with work left to do.
        prefix = "lake0"

        def committed() -> set[str]:
            """Series whose archive a lister sees under this round's prefix now."""
            return {
                key.rsplit("/", 1)[-1].removesuffix(".tar.zst")
                for key in list_keys(client, bucket, prefix + "/")
                if key.endswith(".tar.zst")
            }

        def uploads_open() -> list[str]:
            return [key for key in open_uploads(client, bucket) if key.startswith(prefix + "/")]

        def refetched_since(start: int, before: set[str]) -> int:
            return sum(
                1
                for entry in fake.request_log[start:]
                if entry.endpoint == "getImage" and entry.query.get("SeriesInstanceUID") in before
            )

        with serve_in_thread(fake) as server:

            def arguments() -> list[str]:
                dest = f"s3://{bucket}/{prefix}"
                return ["run", str(job), "--out", dest, "--base-url", server.base_url, "--keep", "tar.zst"]

            def rerun_to_the_end(name: str) -> None:
                """A run left alone: it must finish the round's job, fetch no committed series and
                leave no upload open (it aborts those the kills cut); then verify must pass."""
                before, start = committed(), len(fake.request_log)
                result.committed_at_rerun += len(before)
                code = _run(arguments(), env, root / f"{name}.json")
                result.refetched += refetched_since(start, before)
                if code != 0:
                    result.problems.append(f"{prefix}: the {name} run exited {code}")
                result.open_uploads += len(uploads_open())
                result.lost += len(everything - committed())
                checked = start_cli(["verify", f"s3://{bucket}/{prefix}"], env=env).wait(
                    timeout=_RUN_TIMEOUT_S
                )
                if checked != 0:  # re-reads every object and re-hashes every member
                    result.problems.append(f"{prefix}: verify of the bucket exited {checked}")

            for number in range(kills):
                before, start = committed(), len(fake.request_log)
                result.committed_at_rerun += len(before)
                mid_upload = number % 2 == 0  # the first kill too: even a CI run of 1 kill cuts one
                stall = Fault("stall", "POST", "uploadId=", times=1 if mid_upload else 0, delay_s=_STALL_S)
                proxy.faults.insert(0, stall)
                proc = start_cli([*arguments(), "--quiet"], env=env)
                if mid_upload:
                    result.mid_upload_kills += 1
                    _wait_for_an_open_upload(uploads_open, proc, committed, before)
                else:
                    time.sleep(rng.uniform(0.5, 4.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    result.kills += 1
                proc.wait(timeout=_RUN_TIMEOUT_S)
                stall.times = stall.hits  # an unfired stall must not slow the next run down
                result.refetched += refetched_since(start, before)
                result.partial_visible += _broken_archives(client, bucket, prefix, list_keys, result.problems)
                result.uploads_cut_by_kills += len(uploads_open())
                if committed() == everything:  # this round's job is complete: close it, start another
                    rerun_to_the_end(f"close-{prefix}")
                    result.rounds += 1
                    prefix = f"lake{result.rounds}"
            say(
                f"s3: {result.kills} kills ({result.mid_upload_kills} aimed mid-upload) in "
                f"{result.rounds + 1} rounds, {result.uploads_cut_by_kills} uploads cut open"
            )
            rerun_to_the_end("final")
            before, start = committed(), len(fake.request_log)
            result.committed_at_rerun += len(before)
            again = _run(arguments(), env, root / "again.json")
            result.refetched += refetched_since(start, before)
            report = json.loads((root / "again.json").read_text()) if (root / "again.json").is_file() else {}
            if report.get("done", 0) or again != 0:
                result.problems.append(
                    f"the repeated run exited {again} and stored {report.get('done')} series"
                )
        result.partial_visible += _broken_archives(client, bucket, "", list_keys, result.problems)
        result.open_uploads += len(open_uploads(client, bucket))
        result.faults_injected = sum(fault.hits for fault in proxy.faults)
    finally:
        proxy.stop()
        moto.stop()
    say(f"s3: data lost {result.data_lost()}")
    return result


def _wait_for_an_open_upload(
    uploads_open: Callable[[], list[str]],
    proc: subprocess.Popen[bytes],
    committed_now: Callable[[], set[str]],
    before: set[str],
) -> None:
    """Return once this run has committed a series and the bucket lists an open multipart upload
    (or the run ended, or time is up): the kill then cuts an upload AND the rerun starts with
    series this run committed, which it must not fetch again."""
    deadline = time.monotonic() + _OPEN_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if uploads_open() and committed_now() - before:
            return
        time.sleep(0.05)


def _run(args: list[str], env: dict[str, str], report: Path) -> int:
    proc = start_cli([*args, "--report", str(report)], env=env, stderr=subprocess.DEVNULL)
    return proc.wait(timeout=_RUN_TIMEOUT_S)


def _broken_archives(
    client: Any,
    bucket: str,
    prefix: str,
    list_keys: Callable[[Any, str, str], dict[str, int]],
    problems: list[str],
) -> int:
    broken = 0
    for key in list_keys(client, bucket, prefix + "/" if prefix else ""):
        if key.endswith(".tar.zst"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            found = check_tar_zst(iter([body])).problems
            if found:
                broken += 1
                problems.append(f"{key} is visible but not whole: {found[0]}")
    return broken
