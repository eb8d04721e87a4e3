"""Scale-out benchmark: 1, 2 and 4 shards, and a Dask run, under one politeness budget.

``python -m benchmarks.scaleout [--series-per-study N] [--dask local:1,local:2,tcp:2] [--out-dir DIR]``

The fake server plays a busy archive: every download connection is paced to ``RATE`` bytes/s and
at most ``CAP`` downloads run at once (more get 429 + Retry-After), so the archive can serve at most
``CAP x RATE``. A job's ``--concurrency`` is its budget. What the numbers should show:

* for a given budget, the wall time does not depend on how many shards share it (an array of 4
  is no harsher and no faster than one process: the budget, not the process count, decides);
* throughput tracks ``min(budget, CAP) / CAP`` of the archive's capacity;
* no 429s while the budget stays within the cap; the peak of downloads in flight never exceeds
  the budget (the server counts it).

Dask runs: ``local:N`` is the CLI's own ``--scheduler local:N`` (the cluster's start counts in its
time, as a user sees it); ``tcp:N`` is a local cluster of N worker processes started before the
run and given as ``tcp://`` (a running cluster, as with dask-jobqueue: only the per-series costs).

Nothing is asserted: the document records the numbers (``scaleout-latest.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.server import FakeServer, ServerOptions, project_env
from tcia_fetch.testing import Catalog

RATE = 100_000
CAP = 8
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"


def _options(series_per_study: int) -> ServerOptions:
    return ServerOptions(
        seed=17,
        collections=2,
        patients_per_collection=4,
        series_per_study=series_per_study,
        instances_per_series=(4, 8),
        instance_bytes=(40_000, 70_000),
        rate_bytes_per_s=RATE,
        max_concurrent_downloads=CAP,
        retry_after_s=1.0,
    )


def _job(path: Path, options: ServerOptions, concurrency: int) -> Path:
    catalog = Catalog.generate(**options.catalog_kwargs())  # type: ignore[arg-type]
    listed = ", ".join(f'"{c}"' for c in sorted({entry.collection for entry in catalog.series}))
    path.write_text(f"[download]\nconcurrency = {concurrency}\n\n[[query]]\ncollection = [{listed}]\n")
    return path


def _measure(
    label: str, options: ServerOptions, workdir: Path, budget: int, shards: int, scheduler: str | None
) -> dict[str, object]:
    job = _job(workdir / f"job-{budget}.toml", options, budget)
    out = workdir / f"out-{label}-{budget}-{shards}"
    with (
        FakeServer.start(options, workdir / f"server-{label}-{budget}-{shards}") as server,
        _scheduler_for(scheduler, budget) as address,  # a tcp:N cluster starts before the clock
    ):
        base = [sys.executable, "-m", "tcia_fetch", "run", str(job), "--out", str(out), "--quiet"]
        base += ["--base-url", server.base_url]
        started = time.monotonic()
        if address is not None:
            procs = [subprocess.Popen([*base, "--scheduler", address], env=project_env())]
        elif shards == 1:
            procs = [subprocess.Popen(base, env=project_env())]
        else:
            procs = [
                subprocess.Popen([*base, "--shard", f"{k}/{shards}"], env=project_env())
                for k in range(shards)
            ]
        codes = [proc.wait() for proc in procs]
        wall_s = time.monotonic() - started
    stats = server.stats
    dicom = sum(p.stat().st_size for p in out.rglob("*.dcm"))
    # The engine's own duration (planning + downloads): interpreter start-up is left out, which on
    # a loaded 2-core machine is several seconds per process.
    reports = sorted((out / ".tcia-fetch").glob("last-report.shard-*.json")) or [
        out / ".tcia-fetch" / "last-report.json"
    ]
    run_s = max(float(json.loads(path.read_text())["duration_s"]) for path in reports)
    wire = int(stats.get("download_body_bytes", 0) or 0)  # type: ignore[call-overload]
    return {
        "runner": label,
        "budget": budget,
        "shards": shards,
        "exit_codes": codes,
        "wall_s": round(wall_s, 2),
        "run_s": round(run_s, 2),
        "wire_mb_per_run_s": round(wire / 1e6 / run_s, 3),
        "dicom_mb": round(dicom / 1e6, 2),
        "mb_per_s": round(dicom / 1e6 / wall_s, 3),
        "wire_mb": round(wire / 1e6, 2),
        "wire_mb_per_s": round(wire / 1e6 / wall_s, 3),
        "archive_share": round(min(budget, CAP) / CAP, 3),
        "peak_downloads_in_flight": stats.get("peak_concurrent_downloads"),
        "rate_limited_responses": stats.get("rate_limited_responses"),
        "downloads_started": stats.get("downloads_started"),
    }


@contextlib.contextmanager
def _scheduler_for(spec: str | None, budget: int) -> Iterator[str | None]:
    """``local:N`` as given; ``tcp:N``: a local cluster started (and left running) before the run."""
    if spec is None or not spec.startswith("tcp:"):
        yield spec
        return
    from tcia_fetch.cluster._distributed import local_cluster, threads_for

    workers = int(spec.removeprefix("tcp:"))
    with local_cluster(workers=workers, threads_per_worker=threads_for(budget, workers)) as cluster:
        yield cluster.address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    parser.add_argument("--series-per-study", type=int, default=6)
    parser.add_argument("--budgets", default="2,8")
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument(
        "--dask", default="local:1,local:2", help="schedulers for the Dask runs, comma-separated ('' to skip)"
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    options = _options(args.series_per_study)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tcia-scaleout-") as scratch:
        for budget in (int(b) for b in args.budgets.split(",")):
            for shards in (int(s) for s in args.shards.split(",")):
                rows.append(_measure("shards", options, Path(scratch), budget, shards, None))
                print(json.dumps(rows[-1]), file=sys.stderr)
            for scheduler in filter(None, args.dask.split(",")):
                rows.append(_measure("dask " + scheduler, options, Path(scratch), budget, 1, scheduler))
                print(json.dumps(rows[-1]), file=sys.stderr)
    document = {
        "server": {"rate_bytes_per_s_per_connection": RATE, "max_concurrent_downloads": CAP},
        "series": len(Catalog.generate(**options.catalog_kwargs())),  # type: ignore[arg-type]
        "runs": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "scaleout-latest.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        f"Fake server: {RATE / 1e6:.1f} MB/s per connection, at most {CAP} downloads at once "
        f"(capacity {CAP * RATE / 1e6:.1f} MB/s); {document['series']} series.",
        "",
        "| runner | budget (--concurrency) | shards | wall s | engine s | wire MB/s (engine s) "
        "| share of cap | peak in flight | 429s | exit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['runner']} | {row['budget']} | {row['shards']} | {row['wall_s']} | {row['run_s']} "
            f"| {row['wire_mb_per_run_s']} "
            f"| {row['archive_share']} | {row['peak_downloads_in_flight']} | {row['rate_limited_responses']} "
            f"| {row['exit_codes']} |"
        )
    lines += [
        "",
        f"Machine load while measuring (1-minute load average, 2 cores): {os.getloadavg()[0]:.1f}.",
    ]
    (args.out_dir / "scaleout-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
