"""Results documents: ``<scenario>-latest.json`` (raw runs, medians, targets, machine, commit) and the
combined ``latest.md`` built from every ``*-latest.json`` in the results directory.

Medians are per contender over its runs. Integrity is summarised by the *worst* run (fewest complete
series), because one bad run is what a user would remember. Targets are evaluated on medians of the
default ``tcia-fetch`` configuration and are reported, never asserted: these are benchmarks.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.runner import ScenarioResult, median_of
from benchmarks.server import REPO_ROOT
from benchmarks.setup_env import bench_python

#: A JSON document or row as loaded: loosely typed on purpose (it round-trips through json).
JsonDict = dict[str, Any]

__all__ = ["machine_info", "render_markdown", "results_document", "write_markdown"]

_MEDIAN_KEYS = (
    "wall_s",
    "mb_per_s",
    "cpu_s_per_gb",
    "cpu_user_s",
    "cpu_sys_s",
    "peak_rss_mb",
    "max_single_hwm_mb",
    "sampled_tree_rss_mb",
    "server_cpu_s",
    "background_cpu_s",
    "server.rate_limited_429",
    "server.download_requests",
    "extras.limiter_limit",
    "extras.limiter_learned_cap",
    "extras.limiter_peak_in_flight",
    "cpu_s",
    "server.share_429",
    "time_over_limit",
    "plan_s",
    "plan_cpu_s",
    "plan_peak_rss_mb",
    "first_byte_s",
)


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def git_commit() -> str | None:
    """HEAD of the checkout, with ``+dirty`` when tracked files changed (None outside git)."""
    head = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"])
    if head is None or len(head) != 40:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def machine_info() -> JsonDict:
    """Where the numbers come from: hardware, OS, and the versions of every contender."""
    python = bench_python()
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_total_gb": _mem_total_gb(),
        "python": platform.python_version(),
        "curl": _first_line(["curl", "--version"]),
        "aria2c": _first_line(["aria2c", "--version"]),
        "unzip": _first_line(["unzip", "-v"]),
        "tcia_utils": _first_line(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('tcia-utils'))"]
        )
        if python.exists()
        else None,
    }


def _integrity_summary(rows: list[JsonDict]) -> JsonDict:
    reports = [row["integrity"] for row in rows if isinstance(row.get("integrity"), dict)]
    if not reports:
        return {}
    worst = min(reports, key=lambda report: report["series_complete"])
    return {
        "worst_run": worst,
        "all_runs_complete": all(bool(report["all_complete"]) for report in reports),
    }


def _medians(rows: list[JsonDict]) -> dict[str, JsonDict]:
    by_contender: dict[str, list[JsonDict]] = {}
    for row in rows:
        by_contender.setdefault(str(row["contender"]), []).append(row)
    medians: dict[str, JsonDict] = {}
    for name, own in by_contender.items():
        entry: JsonDict = {"runs": len(own)}
        for key in _MEDIAN_KEYS:
            value = median_of(own, key)
            if value is not None:
                entry[key] = round(value, 4)
        entry.update(_integrity_summary(own))
        medians[name] = entry
    return medians


def _target(name: str, value: float | None, passed: bool | None, detail: str) -> JsonDict:
    return {"target": name, "value": value, "passed": passed, "detail": detail}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def evaluate_targets(scenario: str, medians: dict[str, JsonDict]) -> list[JsonDict]:
    """The issue's targets for this scenario, on medians (``passed`` None = could not be measured)."""
    ours = medians.get("tcia-fetch", {})

    def get(contender: str, key: str) -> float | None:
        value = medians.get(contender, {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    def check(value: float | None, ok: bool) -> bool | None:
        return None if value is None else ok

    targets: list[JsonDict] = []
    if ours and "all_runs_complete" in ours:
        targets.append(
            _target(
                "tcia-fetch: every series complete and byte-identical in every run",
                None,
                bool(ours["all_runs_complete"]),
                "integrity check against the catalog's MD5s",
            )
        )
    if scenario == "tcia-like":
        over = get("tcia-fetch", "time_over_limit")
        targets.append(_target("tcia-fetch time / limit <= 1.2", over, check(over, (over or 0) <= 1.2), ""))
        speedup = _ratio(get("tcia-utils", "wall_s"), get("tcia-fetch", "wall_s"))
        targets.append(
            _target(
                "tcia-fetch >= 2.5x faster than tcia-utils defaults",
                speedup,
                check(speedup, (speedup or 0) >= 2.5),
                "tcia-utils wall / tcia-fetch wall",
            )
        )
        share = get("tcia-fetch", "server.share_429")
        targets.append(
            _target(
                "tcia-fetch < 5% of download requests answered 429",
                share,
                check(share, (share or 0) < 0.05),
                "429s / (downloads started + 429s)",
            )
        )
    elif scenario in ("cap24", "tiny-latency"):
        ours_name = "tcia-fetch@32"
        bound = 1.2 if scenario == "cap24" else 1.25
        versus = 0.4 if scenario == "cap24" else 0.5
        over = get(ours_name, "time_over_limit")
        targets.append(
            _target(
                f"{ours_name} time / limit <= {bound}",
                over,
                check(over, (over or 0) <= bound),
                "limit = zip bytes / (cap x rate) + ceil(series / cap) x first-byte delay",
            )
        )
        share = get(ours_name, "server.share_429")
        targets.append(
            _target(
                f"{ours_name} < 5% of download requests answered 429",
                share,
                check(share, (share or 0) < 0.05),
                "429s / (downloads started + 429s)",
            )
        )
        ratio = _ratio(get(ours_name, "wall_s"), get("tcia-utils", "wall_s"))
        targets.append(
            _target(
                f"{ours_name} time <= {versus}x tcia-utils defaults",
                ratio,
                check(ratio, (ratio or 0) <= versus),
                "tcia-fetch wall / tcia-utils wall",
            )
        )
    elif scenario == "bandwidth":
        ours_name = "tcia-fetch@32"
        settled = get(ours_name, "extras.limiter_limit")
        targets.append(
            _target(
                f"{ours_name} settles where throughput stops growing: final limit <= 12 (link full at ~7)",
                settled,
                check(settled, (settled or 0) <= 12),
                "the limiter's limit at the end of the run (its report)",
            )
        )
        over = get(ours_name, "time_over_limit")
        targets.append(
            _target(
                f"{ours_name} time / link limit <= 1.2",
                over,
                check(over, (over or 0) <= 1.2),
                "limit = zip bytes / total bandwidth",
            )
        )
    elif scenario in ("mem64", "mem64-tls"):
        rss = get("tcia-fetch@64", "peak_rss_mb")
        targets.append(_target("tcia-fetch@64 peak RSS < 100 MB", rss, check(rss, (rss or 0) < 100), "MiB"))
    elif scenario == "tiny600":
        ratio = _ratio(get("tcia-fetch@8", "wall_s"), get("tcia-utils@8", "wall_s"))
        targets.append(
            _target(
                "tcia-fetch@8 time <= 1.0x tcia-utils@8 (full verification and fsync)",
                ratio,
                check(ratio, (ratio or 0) <= 1.0),
                "tcia-fetch wall / tcia-utils wall",
            )
        )
    elif scenario == "loopback":
        cpu_ratio = _ratio(get("tcia-fetch", "cpu_s"), get("tcia-utils", "cpu_s"))
        targets.append(
            _target(
                "tcia-fetch CPU-seconds <= tcia-utils' own",
                cpu_ratio,
                check(cpu_ratio, (cpu_ratio or 0) <= 1.0),
                "tcia-fetch user+sys / tcia-utils user+sys",
            )
        )
        speedup = _ratio(get("tcia-utils", "wall_s"), get("tcia-fetch", "wall_s"))
        targets.append(
            _target(
                "tcia-fetch >= 1.3x faster than tcia-utils",
                speedup,
                check(speedup, (speedup or 0) >= 1.3),
                "tcia-utils wall / tcia-fetch wall",
            )
        )
        versus_curl = _ratio(get("tcia-fetch", "wall_s"), get("curl", "wall_s"))
        targets.append(
            _target(
                "tcia-fetch no slower than curl + parallel unzip",
                versus_curl,
                check(versus_curl, (versus_curl or 0) <= 1.0),
                "tcia-fetch wall / curl wall",
            )
        )
        rss = get("tcia-fetch", "peak_rss_mb")
        targets.append(_target("tcia-fetch peak RSS < 100 MB", rss, check(rss, (rss or 0) < 100), "MiB"))
        # Issue 9's form of the same measurement: every tool 8 at a time.
        ratio = _ratio(get("tcia-fetch@8", "wall_s"), get("tcia-utils@8", "wall_s"))
        targets.append(
            _target(
                "tcia-fetch@8 time <= 0.77x tcia-utils@8",
                ratio,
                check(ratio, (ratio or 0) <= 0.77),
                "tcia-fetch@8 wall / tcia-utils@8 wall",
            )
        )
        ratio = _ratio(get("tcia-fetch@8", "wall_s"), get("curl@8", "wall_s"))
        targets.append(
            _target(
                "tcia-fetch@8 no slower than curl@8 + parallel unzip",
                ratio,
                check(ratio, (ratio or 0) <= 1.0),
                "tcia-fetch@8 wall / curl@8 wall",
            )
        )
        ratio = _ratio(get("tcia-fetch@8", "cpu_s"), get("tcia-utils@8", "cpu_s"))
        targets.append(
            _target(
                "tcia-fetch@8 CPU-seconds <= tcia-utils@8's own",
                ratio,
                check(ratio, (ratio or 0) <= 1.0),
                "user+sys",
            )
        )
    elif scenario == "huge":
        rss = get("tcia-fetch", "peak_rss_mb")
        targets.append(
            _target(
                "tcia-fetch peak RSS < 100 MB regardless of size",
                rss,
                check(rss, (rss or 0) < 100),
                "MiB, sum over the process tree",
            )
        )
    elif scenario == "planning":
        plan_s = get("tcia-fetch", "plan_s")
        targets.append(
            _target(
                "2,524-series plan in < 3 s at 150 ms per query",
                plan_s,
                check(plan_s, (plan_s or 0) < 3.0),
                "wall time of `tcia-fetch plan`, process start included",
            )
        )
    return targets


def _limit_with_first_byte_waits(result: ScenarioResult) -> float | None:
    """The limit plus the first-byte waits a perfect client cannot avoid: one per series, ``cap`` at a
    time, i.e. ``ceil(series / cap) x first_byte_delay_s``. Informational; targets use the plain limit.
    """
    options = result.scenario.server
    if result.limit_s is None or not options.max_concurrent_downloads:
        return None
    rounds = -(-len(result.series_uids) // options.max_concurrent_downloads)
    return round(result.limit_s + rounds * options.first_byte_delay_s, 3)


def results_document(result: ScenarioResult, machine: JsonDict, commit: str | None) -> JsonDict:
    """The JSON document for ``<scenario>-latest.json``: small, no per-file data."""
    scenario = result.scenario
    medians = _medians(result.runs)
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "notes": list(scenario.notes),
        "kind": scenario.kind,
        "started_at": result.started_at,
        "duration_s": round(result.duration_s, 1),
        "git_commit": commit,
        "machine": machine,
        "server": scenario.server.as_dict(),
        "series": len(result.series_uids),
        "dicom_bytes": result.dicom_bytes,
        "dicom_mb": round(result.dicom_bytes / 1e6, 3),
        "zip_mb": None if result.zip_bytes is None else round(result.zip_bytes / 1e6, 3),
        "limit_s": None if result.limit_s is None else round(result.limit_s, 3),
        "limit_with_first_byte_waits_s": _limit_with_first_byte_waits(result),
        "skipped": result.skipped,
        "medians": medians,
        "targets": evaluate_targets(scenario.name, medians),
        "runs": result.runs,
    }


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _integrity_cell(entry: JsonDict) -> str:
    worst = entry.get("worst_run")
    if not isinstance(worst, dict):
        return "–"
    text = f"{worst['series_complete']}/{worst['series_expected']}"
    problems = [
        f"{worst[key]} {label}"
        for key, label in (
            ("series_missing", "missing"),
            ("series_partial", "partial"),
            ("corrupt_files", "corrupt files"),
            ("misplaced_files", "misplaced files"),
        )
        if worst.get(key)
    ]
    return text + (f" ({', '.join(problems)})" if problems else " ok")


def _download_table(document: JsonDict) -> list[str]:
    medians: dict[str, JsonDict] = document["medians"]
    has_limit = document.get("limit_s") is not None
    header = [
        "contender",
        "wall s",
        "MB/s",
        "CPU s/GB",
        "peak RSS MB",
        "429s",
        "integrity (worst run)",
        "server CPU s",
        "other CPU s",
    ]
    if has_limit:
        header[5:5] = ["time ÷ limit", "429 share"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in medians.items():
        cells = [
            f"`{name}`",
            _fmt(entry.get("wall_s")),
            _fmt(entry.get("mb_per_s"), 1),
            _fmt(entry.get("cpu_s_per_gb"), 1),
            _fmt(entry.get("peak_rss_mb"), 1),
            _fmt(entry.get("server.rate_limited_429"), 0),
            _integrity_cell(entry),
            _fmt(entry.get("server_cpu_s"), 1),
            _fmt(entry.get("background_cpu_s"), 1),
        ]
        if has_limit:
            share = entry.get("server.share_429")
            cells[5:5] = [
                _fmt(entry.get("time_over_limit")),
                "–" if not isinstance(share, int | float) else f"{100 * share:.1f}%",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _planning_table(document: JsonDict) -> list[str]:
    medians: dict[str, JsonDict] = document["medians"]
    lines = [
        "| contender | plan s | plan CPU s | plan peak RSS MB | run: first byte on disk s |",
        "|---|---|---|---|---|",
    ]
    for name, entry in medians.items():
        lines.append(
            f"| `{name}` | {_fmt(entry.get('plan_s'))} | {_fmt(entry.get('plan_cpu_s'))} | "
            f"{_fmt(entry.get('plan_peak_rss_mb'), 1)} | {_fmt(entry.get('first_byte_s'))} |"
        )
    return lines


def render_markdown(documents: Iterable[JsonDict]) -> str:
    """One section per scenario: the table, the targets, and what was skipped."""
    documents = list(documents)
    lines = ["# tcia-fetch benchmark results", ""]
    if documents:
        machine = documents[0].get("machine", {})
        assert isinstance(machine, dict)
        lines += [
            f"Machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
            f"{machine.get('mem_total_gb')} GB RAM, {machine.get('platform')}, "
            f"Python {machine.get('python')}. Peers: {machine.get('curl')}; {machine.get('aria2c')}; "
            f"tcia-utils {machine.get('tcia_utils')}.",
            "",
            "Medians over runs. MB = 10^6 bytes of DICOM whose MD5 matches the catalog, "
            "per wall-clock second. "
            "CPU s/GB = user+sys of the contender's whole process tree per verified GB (server excluded). "
            "Peak RSS = sum over the contender's process tree, sampled at 20 Hz (MiB). "
            "Integrity = series complete and byte-identical / series asked for, worst run. "
            "Server CPU s = the fake server's CPU during the run; other CPU s = CPU used by anything "
            "else on the machine meanwhile (noise indicator: the machine may be shared).",
            "",
        ]
    for document in documents:
        lines.append(f"## {document['scenario']}")
        lines.append("")
        lines.append(str(document["description"]))
        lines.append("")
        medians: dict[str, JsonDict] = document["medians"]
        runs = max((int(entry.get("runs", 0)) for entry in medians.values()), default=0)
        lines.append(
            f"{document['series']} series, {document['dicom_mb']} MB of DICOM; runs per contender: {runs}; "
            f"commit {document.get('git_commit')}; {document.get('started_at')}."
        )
        if document.get("limit_s") is not None:
            waits = document.get("limit_with_first_byte_waits_s")
            lines.append(
                f"Limit = {document['zip_mb']} MB of zips ÷ (cap × per-connection rate) "
                f"= {document['limit_s']} s"
                + (f" (with the unavoidable first-byte waits: {waits} s)." if waits is not None else ".")
            )
        for note in document.get("notes", []):
            lines.append(f"Note: {note}")
        lines.append("")
        if document.get("kind") == "planning":
            lines += _planning_table(document)
        else:
            lines += _download_table(document)
        lines.append("")
        targets = document.get("targets") or []
        if targets:
            lines.append("Targets:")
            for target in targets:
                mark = {True: "PASS", False: "MISS", None: "n/a"}[target["passed"]]
                value = "" if target["value"] is None else f" — measured {target['value']}"
                lines.append(f"- {mark}: {target['target']}{value}")
            lines.append("")
        skipped = document.get("skipped") or {}
        if skipped:
            lines.append("Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in skipped.items()))
            lines.append("")
    return "\n".join(lines)


_SCENARIO_ORDER = ("smoke", "loopback", "tcia-like", "huge", "tiny", "planning")


def load_documents(results_dir: Path) -> list[JsonDict]:
    """Every ``*-latest.json`` of a ``benchmarks run`` scenario in ``results_dir``, in the README's
    scenario order (the scale, lake and scale-out benchmarks write their own tables)."""
    from benchmarks.scenarios import SCENARIOS

    order = {name: index for index, name in enumerate((*_SCENARIO_ORDER, *SCENARIOS))}
    documents = []
    for path in results_dir.glob("*-latest.json"):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("scenario") in order:
            documents.append(document)
    documents.sort(key=lambda doc: (order.get(str(doc.get("scenario")), 99), str(doc.get("scenario"))))
    return documents


def write_markdown(results_dir: Path) -> Path:
    """(Re)build ``latest.md`` from the JSON documents present."""
    path = results_dir / "latest.md"
    path.write_text(render_markdown(load_documents(results_dir)) + "\n", encoding="utf-8")
    return path
