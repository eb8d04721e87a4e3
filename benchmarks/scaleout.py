"""Scale-out benchmark: 1, 2 and 4 shards, and a Dask run, under one politeness budget.

``python -m benchmarks.scaleout [--series-per-study N] [--dask local:2,tcp:2] [--repeat R] [--out-dir DIR]``

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.server import FakeServer, ServerOptions, compile_project, project_env
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
    label: str,
    options: ServerOptions,
    workdir: Path,
    budget: int,
    shards: int,
    scheduler: str | None,
    round_number: int = 0,
) -> dict[str, object]:
    job = _job(workdir / f"job-{budget}.toml", options, budget)
    name = f"{label.replace(' ', '-').replace(':', '')}-{budget}-{shards}-{round_number}"
    out = workdir / f"out-{name}"  # a fresh destination every round: never a rerun
    with (
        FakeServer.start(options, workdir / f"server-{name}") as server,
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
    documents = [json.loads(path.read_text()) for path in reports]
    run_s = max(float(document["duration_s"]) for document in documents)
    engine = documents[0].get("engine") or {}
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
        # A Dask run: from its first planned series to the cluster ready for it (runner.py).
        "cluster_ready_s": engine.get("cluster_ready_s"),
        # The machine is shared: its 1-minute load average as the run ended, beside every figure.
        "load_1m": round(os.getloadavg()[0], 2),
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
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every run, interleaved (the table shows medians)"
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--name", default="scaleout-latest", help="file name of the results, without suffix")
    args = parser.parse_args(argv)
    compile_project()  # measured runs use bytecode, as an installed copy does
    options = _options(args.series_per_study)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tcia-scaleout-") as scratch:
        for budget in (int(b) for b in args.budgets.split(",")):
            # Rounds interleave the runners, so a burst of load on the shared machine lands on
            # one round of each rather than on every run of one runner.
            for round_number in range(args.repeat):
                for shards in (int(s) for s in args.shards.split(",")):
                    rows.append(
                        _measure("shards", options, Path(scratch), budget, shards, None, round_number)
                    )
                    rows[-1]["round"] = round_number
                    print(json.dumps(rows[-1]), file=sys.stderr)
                for scheduler in filter(None, args.dask.split(",")):
                    label = "dask " + scheduler
                    rows.append(_measure(label, options, Path(scratch), budget, 1, scheduler, round_number))
                    rows[-1]["round"] = round_number
                    print(json.dumps(rows[-1]), file=sys.stderr)
    series = len(Catalog.generate(**options.catalog_kwargs()))  # type: ignore[arg-type]
    summary = _summarize(rows)
    document = {
        "server": {"rate_bytes_per_s_per_connection": RATE, "max_concurrent_downloads": CAP},
        "series": series,
        "repeat": args.repeat,
        "summary": summary,
        "runs": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        f"Fake server: {RATE / 1e6:.1f} MB/s per connection, at most {CAP} downloads at once "
        f"(capacity {CAP * RATE / 1e6:.1f} MB/s); {series} series; medians of {args.repeat} "
        "interleaved round(s); 'vs 1 process' is the single process' median time over this one's.",
        "",
        "| runner | budget (--concurrency) | shards | wall s | engine s | vs 1 process (wall) "
        "| vs 1 process (engine) | Dask cluster ready s | wire MB/s (engine s) | share of cap "
        "| peak in flight | 429s | 1-min load (2 cores) | exit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['runner']} | {row['budget']} | {row['shards']} | {row['wall_s']} | {row['run_s']} "
            f"| {row['vs_single_wall']} | {row['vs_single_engine']} | {row['cluster_ready_s']} "
            f"| {row['wire_mb_per_run_s']} | {row['archive_share']} | {row['peak_downloads_in_flight']} "
            f"| {row['rate_limited_responses']} | {row['load_1m']} | {row['exit_codes']} |"
        )
    (args.out_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _summarize(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (runner, budget, shards): medians over the rounds, the loads seen, and the
    speed relative to one process with the same budget (>1: faster than one process)."""
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["runner"], row["budget"], row["shards"]), []).append(row)

    def median(runs: list[dict[str, object]], name: str) -> float | None:
        values = [float(run[name]) for run in runs if run.get(name) is not None]  # type: ignore[arg-type]
        return round(statistics.median(values), 2) if values else None

    summary = []
    for (runner, budget, shards), runs in groups.items():
        single = groups.get(("shards", budget, 1), [])
        loads = sorted(float(run["load_1m"]) for run in runs)  # type: ignore[arg-type]
        wall, engine = median(runs, "wall_s"), median(runs, "run_s")
        single_wall, single_engine = median(single, "wall_s"), median(single, "run_s")
        summary.append(
            {
                "runner": runner,
                "budget": budget,
                "shards": shards,
                "rounds": len(runs),
                "wall_s": wall,
                "run_s": engine,
                "vs_single_wall": round(single_wall / wall, 2) if single_wall and wall else None,
                "vs_single_engine": round(single_engine / engine, 2) if single_engine and engine else None,
                "cluster_ready_s": median(runs, "cluster_ready_s"),
                "wire_mb_per_run_s": median(runs, "wire_mb_per_run_s"),
                "archive_share": runs[0]["archive_share"],
                "peak_downloads_in_flight": max(int(run["peak_downloads_in_flight"] or 0) for run in runs),  # type: ignore[call-overload]
                "rate_limited_responses": sum(int(run["rate_limited_responses"] or 0) for run in runs),  # type: ignore[call-overload]
                "load_1m": f"{loads[0]:.1f}-{loads[-1]:.1f}" if len(loads) > 1 else f"{loads[0]:.1f}",
                "exit_codes": sorted({code for run in runs for code in run["exit_codes"]}),  # type: ignore[attr-defined]
            }
        )
    return summary


if __name__ == "__main__":
    sys.exit(main())
