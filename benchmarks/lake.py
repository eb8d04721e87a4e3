"""``python -m benchmarks.lake [--runs N] [--series N] [--out-dir DIR]``: data-lake destinations.

Measures tcia-fetch itself (no peers) writing one job to four places: a local directory with
``keep = dicom`` and with ``keep = tar.zst``, and an S3 bucket (moto's server on loopback) with
``keep = tar.zst`` and ``keep = zip``. For each: wall time of the real CLI, objects (files)
stored and bytes stored, run state excluded, peak RSS, and the 1-minute load average before and
after (the machine is shared). The fake NBIA server runs in this process (unthrottled) and the
CLI is a child process, as a user runs it; each run gets a fresh destination. moto runs as its
own process (``python -m moto.server``; ``--moto-in-process`` for the tests' threaded server,
which shares this process's interpreter lock with the fake server). moto keeps objects in
memory, so "to S3" here measures tcia-fetch's side of the work (archive, multipart upload, state
in the bucket), not a network: a real endpoint adds its own latency and bandwidth.

Results: ``<out-dir>/lake-latest.json`` (every run, medians) and ``lake-latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.report import git_commit, machine_info
from benchmarks.server import compile_project
from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.testing import Catalog, FakeNBIA
from tcia_fetch.testing.s3 import MotoS3, MotoS3Process, list_keys, s3_env

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
TARGETS = (("disk", "dicom"), ("disk", "tar.zst"), ("s3", "tar.zst"), ("s3", "zip"))


def _catalog(series: int) -> Catalog:
    return Catalog.generate(
        seed=97,
        collections=2,
        patients_per_collection=max(1, series // 8),
        series_per_study=4,
        instances_per_series=(20, 120),
        instance_bytes=(30_000, 160_000),
    )


def _disk_holdings(root: Path) -> tuple[int, int]:
    objects = stored = 0
    for path in root.rglob("*"):
        if ".tcia-fetch" in path.parts or not path.is_file():
            continue
        if path.name in ("metadata.csv", "catalog.parquet", "instances.parquet"):
            continue
        objects += 1
        stored += path.stat().st_size
    return objects, stored


def _run_once(
    target: str,
    keep: str,
    job: Path,
    base_url: str,
    moto: MotoS3 | MotoS3Process,
    scratch: Path,
    n: int,
    code: Path | None = None,
) -> dict[str, Any]:
    env: dict[str, str] = {}
    if target == "s3":
        bucket = f"bench-{os.getpid()}-{n}-{keep.replace('.', '')}"
        client = moto.client()
        client.create_bucket(Bucket=bucket)
        env = s3_env(moto.endpoint, scratch / f"work-{n}", scratch)
        env["TCIA_FETCH_S3_PART_BYTES"] = str(8 << 20)
        dest = f"s3://{bucket}/lake"
    else:
        dest = str(scratch / f"out-{n}")
    args = ["run", str(job), "--out", dest, "--base-url", base_url, "--keep", keep, "--quiet"]
    load_before = os.getloadavg()[0]  # the machine is shared: every figure carries its load
    started = time.perf_counter()
    if code is None:
        proc = start_cli(args, env=env, stderr=subprocess.PIPE)
    else:  # another source tree (e.g. `git archive main`), for a before/after comparison
        merged = {**os.environ, **env, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "tcia_fetch", *args]
        proc = subprocess.Popen(command, env=merged, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = scratch / f"work-{n}"
    peaks = {"rss": 0, "work": 0, "written": 0}
    done = threading.Event()

    def sample() -> None:  # peak RSS of the CLI and peak bytes in its local work dir
        while not done.wait(0.05):
            peaks["rss"] = max(peaks["rss"], _rss_bytes(proc.pid))
            peaks["work"] = max(peaks["work"], _tree_bytes(work))
            peaks["written"] = max(peaks["written"], _disk_written(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate(timeout=1800)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{target}/{keep} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    if target == "s3":
        keys = {
            key: size
            for key, size in list_keys(moto.client(), bucket).items()
            if "/.tcia-fetch/" not in key and not key.endswith((".csv", ".parquet"))
        }
        objects, stored = len(keys), sum(keys.values())
    else:
        objects, stored = _disk_holdings(Path(dest))
    return {
        "target": target,
        "keep": keep,
        "seconds": round(elapsed, 3),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "objects": objects,
        "bytes": stored,
        "peak_rss_MB": round(peaks["rss"] / 1e6, 1),
        "peak_work_dir_MB": round(peaks["work"] / 1e6, 2),
        # Bytes the CLI process sent to local storage (/proc/<pid>/io write_bytes; the last sample
        # before it exited): a staged archive is written and fsynced, a streamed one is not.
        "local_disk_written_MB": round(peaks["written"] / 1e6, 2),
    }


def _disk_written(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as io_stats:
            for line in io_stats:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lake", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--series", type=int, default=32, help="about this many series")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--only-s3", action="store_true", help="only the bucket targets")
    parser.add_argument(
        "--moto-in-process",
        action="store_true",
        help="run moto in this process (as the tests do) instead of its own (`python -m moto.server`)",
    )
    parser.add_argument(
        "--code", type=Path, default=None, help="run the CLI from this source tree (before/after)"
    )
    args = parser.parse_args(argv)
    compile_project()  # measured runs use bytecode, as an installed copy does
    targets = tuple(t for t in TARGETS if t[0] == "s3") if args.only_s3 else TARGETS
    catalog = _catalog(args.series)
    dicom_bytes = sum(series.total_bytes for series in catalog.series)
    instances = sum(series.instance_count for series in catalog.series)
    runs: list[dict[str, Any]] = []
    moto: MotoS3 | MotoS3Process = MotoS3() if args.moto_in_process else MotoS3Process()
    try:
        with tempfile.TemporaryDirectory(prefix="tcia-fetch-lake-bench-") as temp:
            scratch = Path(temp)
            job = scratch / "list.tcia"
            uids = "\n".join(series.uid for series in catalog.series)
            job.write_text(f"manifestVersion=3.0\nListOfSeriesToDownload=\n{uids}\n")
            with serve_in_thread(FakeNBIA(catalog)) as server:
                n = 0
                for run in range(args.runs):
                    for target, keep in targets:  # interleaved: machine drift is shared
                        n += 1
                        result = _run_once(target, keep, job, server.base_url, moto, scratch, n, args.code)
                        result["run"] = run
                        runs.append(result)
                        print(json.dumps(result), flush=True)
    finally:
        moto.stop()
    medians = []
    for target, keep in targets:
        mine = [r for r in runs if r["target"] == target and r["keep"] == keep]
        seconds = statistics.median(r["seconds"] for r in mine)
        medians.append(
            {
                "target": target,
                "keep": keep,
                "median_seconds": seconds,
                "verified_MB_per_s": round(dicom_bytes / seconds / 1e6, 1),
                "objects": mine[0]["objects"],
                "bytes": mine[0]["bytes"],
                "bytes_vs_dicom": round(mine[0]["bytes"] / dicom_bytes, 3),
                "median_peak_rss_MB": statistics.median(r["peak_rss_MB"] for r in mine),
                "max_peak_work_dir_MB": max(r["peak_work_dir_MB"] for r in mine),
                "median_local_disk_written_MB": statistics.median(r["local_disk_written_MB"] for r in mine),
                "load_1min_range": [
                    min(r["load_1min_before"] for r in mine),
                    max(r["load_1min_after"] for r in mine),
                ],
            }
        )
    document = {
        "benchmark": "lake",
        "commit": git_commit(),
        "machine": machine_info(),
        "job": {"series": len(catalog.series), "instances": instances, "dicom_bytes": dicom_bytes},
        "moto": "in-process" if args.moto_in_process else "own process",
        "runs": runs,
        "medians": medians,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "lake-latest.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        f"# Data-lake destinations ({len(catalog.series)} series, {instances} instances, "
        f"{dicom_bytes / 1e6:.1f} MB DICOM; median of {args.runs} runs)",
        "",
        "| destination | keep | time (s) | verified MB/s | objects stored | bytes stored | vs DICOM bytes "
        "| peak RSS (MB) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in medians:
        lines.append(
            f"| {row['target']} | {row['keep']} | {row['median_seconds']:.2f} | {row['verified_MB_per_s']} "
            f"| {row['objects']} | {row['bytes']} | {row['bytes_vs_dicom']} | {row['median_peak_rss_MB']} "
            f"| {row['load_1min_range'][0]}-{row['load_1min_range'][1]} |"
        )
    (args.out_dir / "lake-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
