"""Benchmark scenario "scale" (issue 13): jobs of 10^4 to 6x10^5 one-instance series.

``python -m benchmarks.scale [--series 2000,10000,100000] [--out-dir DIR] [--temp-dir DIR]``

For each size a separate fake server (``python -m tcia_fetch.testing serve``) serves that many
tiny series (one 2 KB instance each) on loopback, and the job is a ``.tcia`` manifest of all of
them, fetched 8 at a time. Measured per size, each command exec'd as a user would run it:

* ``plan``; ``run`` interrupted (SIGINT) about 40% of the way, then the resumed ``run`` to the end;
  a rerun of the finished job (everything skipped); ``status``; ``verify --no-md5``;
* wall time, CPU (user+sys, from ``wait4``) and peak RSS (``VmHWM`` polled from /proc: the
  fork-time RSS of this process does not leak into it, unlike ``ru_maxrss``) of each;
* CPU per series of the fetch (interrupted + resumed run), and the state directory's size
  (and what it is made of: snapshot, segments, plan digests, reports).

Large sizes (``--finished 100000,600000``) are not fetched whole: the journal is built directly
with all but the last 3,000 series done, then ``plan``, the resumed ``run`` (fetching those
3,000 while it skips the rest), the rerun, the rerun again with metadata.csv removed (so it
redoes the per-run pass over every done record: metadata.csv and the catalog), ``status`` and
``verify`` are measured; CPU per series there is the resumed run's CPU less that second
rerun's, per fetched series, and the per-run pass is reported on its own (per 1,000 series).
Each figure carries the 1-minute load average at its end (the machine is shared).

Targets (issue 13) are checked and written as pass/miss: peak RSS of every command < 150 MB,
a rerun of the finished job < 60 s, ``status`` < 10 s, CPU per series within 1.2x of the
2,000-series job. Results go to ``results/scale-latest.json`` and ``results/scale-latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.server import compile_project
from tcia_fetch.campaign.process import peak_rss_kb

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
RSS_TARGET_MB = 150.0
RERUN_TARGET_S = 60.0
STATUS_TARGET_S = 10.0
CPU_RATIO_TARGET = 1.2
SERIES_PER_STUDY = 100


@dataclass
class Measured:
    command: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int
    #: 1-minute load average when the command ended: the machine is shared, so wall seconds
    #: are read beside it.
    load_1m: float = 0.0


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def measure(
    name: str,
    args: list[str],
    *,
    stop_after_s: float | None = None,
    stop_when: Callable[[], bool] | None = None,
    log: Path,
) -> Measured:
    """Run ``python -m tcia_fetch ARGS``; wall, CPU and peak RSS (SIGINT after ``stop_after_s``,
    or once ``stop_when()`` is true, polled every half second)."""
    started = time.monotonic()
    argv = [sys.executable, "-m", "tcia_fetch", *args]
    with open(log, "ab") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=_env())
    peak_kb = 0
    interrupted = False
    next_poll = started
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, peak_rss_kb(proc.pid, argv))
        now = time.monotonic()
        stop = stop_after_s is not None and now - started > stop_after_s
        if stop_when is not None and now >= next_poll:
            next_poll = now + 0.5
            stop = stop or stop_when()
        if stop and not interrupted:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        command=name,
        wall_s=round(time.monotonic() - started, 2),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        peak_rss_mb=round(peak_kb / 1024, 1),
        exit_code=proc.returncode,
        load_1m=round(os.getloadavg()[0], 1),
    )


def _journaled_done(out: Path) -> int:
    """``done`` records in the destination's journal segments (the run compacts only at its end
    or every 20,000 records, so below that the segments hold every record of a first run)."""
    count = 0
    for segment in (out / ".tcia-fetch" / "journal").glob("*.jsonl"):
        with open(segment, "rb") as source:
            count += sum(1 for line in source if b'"status":"done"' in line)
    return count


def _start_server(series: int, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = work / "port"
    patients = max(1, series // SERIES_PER_STUDY)
    args = [
        sys.executable, "-m", "tcia_fetch.testing", "serve", "--seed", "61", "--collections", "1",
        "--patients-per-collection", str(patients), "--series-per-study", str(SERIES_PER_STUDY),
        "--instances-per-series", "1,1", "--instance-bytes", "2000,2000", "--port-file", str(port_file),
        "--log-level", "WARNING",
    ]  # fmt: skip
    server = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1800
    while not port_file.exists() or not port_file.read_text().strip():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the fake server did not start")
        time.sleep(0.2)
    return server, f"http://127.0.0.1:{port_file.read_text().strip()}/nbia-api/services/v4/"


def _manifest(series: int, path: Path) -> None:
    from tcia_fetch.testing import Catalog

    catalog = Catalog.generate(
        seed=61,
        collections=1,
        patients_per_collection=max(1, series // SERIES_PER_STUDY),
        series_per_study=SERIES_PER_STUDY,
        instances_per_series=(1, 1),
        instance_bytes=(2000, 2000),
    )
    path.write_text(
        "downloadServerUrl=x\nListOfSeriesToDownload=\n" + "\n".join(s.uid for s in catalog.series) + "\n"
    )


def _du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _state_parts(state: Path) -> dict[str, int]:
    """Bytes of the state directory by part: what it is made of per series (issue 13)."""
    parts: dict[str, int] = {}
    for path in state.rglob("*"):
        if path.is_file():
            top = path.relative_to(state).parts[0]
            parts[top] = parts.get(top, 0) + path.stat().st_size
    return dict(sorted(parts.items(), key=lambda item: -item[1]))


def _start_lazy_server(series: int, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = work / "port"
    args = [
        sys.executable, "-m", "tcia_fetch.testing", "serve", "--seed", "61", "--lazy-series", str(series),
        "--instances-per-series", "1,1", "--instance-bytes", "2000,2000", "--port-file", str(port_file),
        "--log-level", "WARNING",
    ]  # fmt: skip
    server = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not port_file.exists() or not port_file.read_text().strip():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the fake server did not start")
        time.sleep(0.2)
    return server, f"http://127.0.0.1:{port_file.read_text().strip()}/nbia-api/services/v4/"


def _finished_destination(series: int, out: Path, manifest: Path, missing: int = 0) -> float:
    """A destination whose journal says ``series`` of the lazy catalog are done (no download).

    What a finished N-series job leaves in its state directory, built directly: records with a
    metadata row and one file each, folded into the snapshot. The last ``missing`` series are
    left out (the part a resumed run still has to fetch). Returns the build time.
    """
    from tcia_fetch.store.journal import SEGMENT_DIR, Journal
    from tcia_fetch.store.records import FileEntry, SeriesRecord
    from tcia_fetch.testing import LazyCatalog

    started = time.monotonic()
    catalog = LazyCatalog(count=series, seed=61)
    state = out / ".tcia-fetch"
    (state / SEGMENT_DIR).mkdir(parents=True)
    uids = []
    with open(state / SEGMENT_DIR / "00000000000000000001-bench-1-aa.jsonl", "w", encoding="utf-8") as sink:
        for index in range(series):
            entry = catalog.entry(index)
            uids.append(entry.uid)
            if index >= series - missing:
                continue
            path = f"{entry.collection}/{entry.patient_id}/{entry.study_uid}/{entry.uid}"
            record = SeriesRecord(
                series_uid=entry.uid, status="done", at=1.7e9, run_id="synthetic", path=path,
                files=(FileEntry("1-1.dcm", 2000, "0" * 32),), instance_count=1, dicom_bytes=2000,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", metadata=dict(entry.series_row()),
            )  # fmt: skip
            sink.write(record.to_json() + "\n")
    Journal.open(state, run_id="build", compact_every=series + 1).compact()
    manifest.write_text("downloadServerUrl=x\nListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    return time.monotonic() - started


#: Series a large size's resumed run still fetches (the rest are done in the built journal).
RESUMED_FETCH = 3000
REWRITE = "run (finished, rerun, metadata.csv rewritten)"


def run_finished_size(series: int, temp_dir: Path) -> dict[str, object]:
    """Large sizes with little downloading: plan, a resumed run, the rerun, status, verify.

    The journal is built directly with all but the last :data:`RESUMED_FETCH` series done;
    the resumed run fetches those for real (one-instance series) while it skips the rest.
    """
    work = Path(tempfile.mkdtemp(prefix=f"scale-finished-{series}-", dir=temp_dir))
    log = work / "cli.log"
    manifest = work / "job.tcia"
    out = work / "out"
    missing = min(RESUMED_FETCH, series)
    build_s = _finished_destination(series, out, manifest, missing=missing)
    server, base_url = _start_lazy_server(series, work)
    common = ["--base-url", base_url]
    results: list[Measured] = []
    try:
        results.append(measure("plan", ["plan", str(manifest), *common], log=log))
        fetch = ["run", str(manifest), "--out", str(out), "--concurrency", "8", "--quiet", *common]
        results.append(measure(f"run (resumed, last {missing:,} fetched)", fetch, log=log))
        results.append(measure("run (finished, rerun)", fetch, log=log))
        # The same rerun with metadata.csv removed: the skip pass plus the per-run pass over every
        # done record (metadata.csv, the Parquet catalog), which a run that fetched anything pays.
        (out / "metadata.csv").unlink()
        results.append(measure(REWRITE, fetch, log=log))
        report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
        results.append(measure("status", ["status", str(out), "--format", "json"], log=log))
        # The Parquet catalog on demand (a run writes it in its own process: in its figures above).
        results.append(measure("catalog", ["catalog", str(out)], log=log))
        results.append(
            measure("verify --no-md5", ["verify", str(out), "--no-md5", "--format", "json"], log=log)
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    by_name = {item.command: item for item in results}
    resumed, rerun = by_name[f"run (resumed, last {missing:,} fetched)"], by_name["run (finished, rerun)"]
    rewrite = by_name[REWRITE]
    return {
        "series": series,
        "mode": f"journal built directly with all but {missing:,} done; the resumed run fetches those",
        "build_s": round(build_s, 1),
        "commands": [asdict(item) for item in results],
        # The fetched series' share of the resumed run: its CPU less the rerun's that also
        # rewrote metadata.csv and the catalog (the same skip pass over every series and the
        # same per-run pass over every done record, with nothing to fetch).
        "cpu_per_series_ms": round(1000 * max(0.0, resumed.cpu_s - rewrite.cpu_s) / missing, 3),
        # What every run that fetched anything pays once, however few it fetched: the pass over
        # all done records for metadata.csv and the catalog (per 1,000 series of the job).
        "per_run_pass_ms_per_1000": round(1000 * max(0.0, rewrite.cpu_s - rerun.cpu_s) / (series / 1000), 1),
        "state_bytes": _du_bytes(out / ".tcia-fetch"),
        "state_parts": _state_parts(out / ".tcia-fetch"),
        "metadata_csv_bytes": (out / "metadata.csv").stat().st_size if (out / "metadata.csv").exists() else 0,
        "rerun_report": {key: report[key] for key in ("planned", "done", "skipped", "failed")},
        "work_dir": str(work),
    }


def run_size(series: int, temp_dir: Path) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix=f"scale-{series}-", dir=temp_dir))
    log = work / "cli.log"
    manifest = work / "job.tcia"
    _manifest(series, manifest)
    server, base_url = _start_server(series, work)
    out = work / "out"
    common = ["--base-url", base_url]
    results: list[Measured] = []
    try:
        results.append(measure("plan", ["plan", str(manifest), *common], log=log))
        fetch = ["run", str(manifest), "--out", str(out), "--concurrency", "8", "--quiet", *common]

        # An interrupted first run (SIGINT once 40% of the series are journaled done: a fixed
        # delay let a quiet machine finish first), then the resumed run to the end.
        def far_enough() -> bool:
            return _journaled_done(out) >= 0.4 * series

        results.append(measure("run (interrupted)", fetch, stop_when=far_enough, log=log))
        results.append(measure("run (resumed)", fetch, log=log))
        results.append(measure("run (finished, rerun)", fetch, log=log))
        results.append(measure("status", ["status", str(out), "--format", "json"], log=log))
        results.append(
            measure("verify --no-md5", ["verify", str(out), "--no-md5", "--format", "json"], log=log)
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
    by_name = {item.command: item for item in results}
    fetch_cpu = by_name["run (interrupted)"].cpu_s + by_name["run (resumed)"].cpu_s
    return {
        "series": series,
        "commands": [asdict(item) for item in results],
        "cpu_per_series_ms": round(1000 * fetch_cpu / series, 3),
        "state_bytes": _du_bytes(out / ".tcia-fetch"),
        "state_parts": _state_parts(out / ".tcia-fetch"),
        "metadata_csv_bytes": (out / "metadata.csv").stat().st_size if (out / "metadata.csv").exists() else 0,
        "rerun_report": {key: report[key] for key in ("planned", "done", "skipped", "failed")},
        "work_dir": str(work),
    }


def judge(sizes: list[dict[str, object]]) -> list[dict[str, object]]:
    """The issue's targets, each with its measurement and pass/miss."""
    verdicts: list[dict[str, object]] = []
    baseline = next((s for s in sizes if s["series"] == 2000), None)
    for size in sizes:
        commands = {c["command"]: c for c in _commands(size)}
        for name, item in commands.items():
            verdicts.append(
                _verdict(size["series"], f"peak RSS of {name}", item["peak_rss_mb"], RSS_TARGET_MB, "MB")
            )
        baseline_ok = size.get("cpu_per_series_ms") is not None
        rerun = commands["run (finished, rerun)"]
        verdicts.append(
            _verdict(size["series"], "rerun of the finished job", rerun["wall_s"], RERUN_TARGET_S, "s")
        )
        verdicts.append(
            _verdict(size["series"], "status wall", commands["status"]["wall_s"], STATUS_TARGET_S, "s")
        )
        if baseline is not None and size is not baseline and baseline_ok:
            ratio = _number(size["cpu_per_series_ms"]) / _number(baseline["cpu_per_series_ms"])
            verdicts.append(
                _verdict(
                    size["series"],
                    "CPU per series / 2,000-series job",
                    round(ratio, 2),
                    CPU_RATIO_TARGET,
                    "x",
                )
            )
    return verdicts


def _verdict(series: object, what: str, value: object, limit: float, unit: str) -> dict[str, object]:
    return {
        "series": series,
        "target": f"{what} < {limit} {unit}",
        "value": value,
        "pass": _number(value) < limit,
    }


def _commands(size: dict[str, object]) -> list[dict[str, Any]]:
    """The measured commands of one size (the results document is JSON-shaped, hence ``Any``)."""
    commands = size["commands"]
    assert isinstance(commands, list)
    return commands


def _number(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def write_results(sizes: list[dict[str, object]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts = judge(sizes)
    document = {"scenario": "scale", "sizes": sizes, "targets": verdicts, "cpus": os.cpu_count()}
    (out_dir / "scale-latest.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        "# Scenario scale (issue 13)",
        "",
        "| series | command | wall s | CPU s | peak RSS MB | exit | load (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for c in _commands(size):
            lines.append(
                f"| {size['series']:,} | {c['command']} | {c['wall_s']} | {c['cpu_s']} "
                f"| {c['peak_rss_mb']} | {c['exit_code']} | {c.get('load_1m', '')} |"
            )
    lines += [
        "",
        "| series | CPU per series (fetch) | per-run pass per 1,000 series | state dir (by part, MB) "
        "| metadata.csv |",
        "|---|---|---|---|---|",
    ]
    for size in sizes:
        parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in dict(size.get("state_parts") or {}).items())  # type: ignore[call-overload]
        lines.append(
            f"| {size['series']:,} | {size['cpu_per_series_ms']} ms "
            f"| {size.get('per_run_pass_ms_per_1000', '')} ms "
            f"| {float(str(size['state_bytes'])) / 1e6:.1f} MB ({parts}) "
            f"| {float(str(size['metadata_csv_bytes'])) / 1e6:.1f} MB |"
        )
    lines += ["", "| series | target | measured | result |", "|---|---|---|---|"]
    for v in verdicts:
        lines.append(
            f"| {v['series']:,} | {v['target']} | {v['value']} | {'pass' if v['pass'] else 'MISS'} |"
        )
    (out_dir / "scale-latest.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--series", default="2000,10000", help="sizes fetched for real (comma-separated)")
    parser.add_argument(
        "--finished",
        default="100000,600000",
        help="sizes measured on a synthetic finished destination (plan, rerun, status, verify)",
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--temp-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    compile_project()  # measured runs use bytecode, as an installed copy does
    sizes = []
    plan = [(run_size, text) for text in args.series.split(",") if text]
    plan += [(run_finished_size, text) for text in args.finished.split(",") if text]
    for function, text in plan:
        result = function(int(text), args.temp_dir)
        print(json.dumps(result), flush=True)
        sizes.append(result)
        write_results(sizes, args.out_dir)
    print((args.out_dir / "scale-latest.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
