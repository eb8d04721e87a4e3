"""Hostile-server families "query-bomb" and "redirect" (issue 14 items 1, 6 and 7).

query-bomb: answers that would blow memory if read whole — a 1 MB gzip inflating to 1 GiB on
``getCollectionValues``, a 512 MiB ``getSeriesMetadata`` bomb under ``run`` (gzip, and plain),
an endless chunked body. The CLI must end each with a clear error that names the endpoint and
the limit, peak under :data:`PEAK_RSS_LIMIT_MB`, and well before the query timeout.

redirect: a malformed ``Location`` on one series' getImage (that series fails, the others are
done, exit 1, never the bad-input exit 2); a download redirected to another origin (refused, the
other origin receives nothing); the legacy token endpoint answering 307 to another origin (an
authentication error naming that origin; the other origin receives nothing, so the password
never leaves; the password appears in no output).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tcia_fetch.campaign.hostile_server import CliRun, ServerCase, ServerCaseOutcome, run_cli_measured
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, serve_in_background
from tcia_fetch.testing._recorder import RecordingListener

__all__ = ["PEAK_RSS_LIMIT_MB", "cases"]

#: The issue's bound on memory, whatever a body claims or contains.
PEAK_RSS_LIMIT_MB = 200.0
#: A bounded body ends in seconds on loopback; the query timeout would be 600 s.
_WALL_LIMIT_S = 90.0
_PASSWORD = "hunter2-s3cret-pw"


def _catalog() -> Catalog:
    return Catalog.generate(
        seed=14,
        collections=1,
        patients_per_collection=3,
        series_per_study=1,
        instances_per_series=(2, 3),
        instance_bytes=(2_000, 4_000),
    )


def _manifest(workdir: Path, catalog: Catalog) -> Path:
    path = workdir / "job.tcia"
    path.write_text("ListOfSeriesToDownload=\n" + "\n".join(entry.uid for entry in catalog.series) + "\n")
    return path


def _base_env(workdir: Path) -> dict[str, str]:
    # A private config home: no user config file can change the limits under test.
    return {"XDG_CONFIG_HOME": str(workdir / "config"), "HOME": str(workdir)}


def _outcome(family: str, name: str, run: CliRun) -> ServerCaseOutcome:
    outcome = ServerCaseOutcome(family, name, exit_code=run.exit_code, peak_rss_mb=run.peak_rss_mb)
    if run.timed_out:
        outcome.problems.append(f"timed out after {run.wall_s:.0f} s")
    if run.peak_rss_mb > PEAK_RSS_LIMIT_MB:
        outcome.problems.append(f"peak RSS {run.peak_rss_mb:.0f} MB > {PEAK_RSS_LIMIT_MB:.0f} MB")
    if run.wall_s > _WALL_LIMIT_S:
        outcome.problems.append(f"took {run.wall_s:.0f} s: the body was not cut at its limit")
    return outcome


def _expect_text(outcome: ServerCaseOutcome, run: CliRun, needles: Sequence[str]) -> None:
    text = run.stdout + run.stderr
    for needle in needles:
        if needle not in text:
            outcome.problems.append(f"output lacks {needle!r}: {text[-400:]!r}")


def _report_counts(out: Path, outcome: ServerCaseOutcome) -> dict[str, object]:
    """Read ``last-report.json``; fill done/failed counts; the parsed report ({} when absent)."""
    path = out / ".tcia-fetch" / "last-report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        outcome.problems.append(f"no readable report at {path}")
        return {}
    if isinstance(report, dict):
        counts = report.get("counts") if isinstance(report.get("counts"), dict) else report
        assert isinstance(counts, dict)
        done, failed = counts.get("done"), counts.get("failed")
        outcome.series_done = done if isinstance(done, int) else None
        outcome.series_failed = failed if isinstance(failed, int) else None
        return report
    return {}


# ---- query-bomb -----------------------------------------------------------------------------


def _query_collections(
    workdir: Path, rule: FaultRule, name: str, needles: Sequence[str]
) -> ServerCaseOutcome:
    fake = FakeNBIA(_catalog(), faults=FaultPlan(rules=[rule]))
    with serve_in_background(fake) as server:
        run = run_cli_measured(
            ["query", "collections", "--base-url", server.base_url],
            env=_base_env(workdir),
            timeout_s=_WALL_LIMIT_S * 2,
        )
    outcome = _outcome("query-bomb", name, run)
    if run.exit_code in (0, 2) or run.exit_code < 0:
        outcome.problems.append(f"exit {run.exit_code}: a hostile body is a server failure (exit 1)")
    _expect_text(outcome, run, needles)
    return outcome


def _collections_gzip_bomb(workdir: Path) -> ServerCaseOutcome:
    rule = FaultRule(FaultKind.QUERY_BOMB, times=None, endpoint="getCollectionValues", inflated_bytes=2**30)
    return _query_collections(
        workdir, rule, "collections-gzip-1gib", ["getCollectionValues", "decompression bomb"]
    )


def _collections_endless(workdir: Path) -> ServerCaseOutcome:
    rule = FaultRule(FaultKind.ENDLESS_BODY, times=None, endpoint="getCollectionValues")
    return _query_collections(workdir, rule, "collections-endless", ["getCollectionValues", "max_body_bytes"])


def _metadata_bomb(workdir: Path, *, encoding: str, name: str, needle: str) -> ServerCaseOutcome:
    catalog = _catalog()
    rule = FaultRule(
        FaultKind.QUERY_BOMB,
        times=None,
        endpoint="getSeriesMetadata",
        inflated_bytes=512 * 2**20,
        encoding=encoding,
    )
    out = workdir / "out"
    with serve_in_background(FakeNBIA(catalog, faults=FaultPlan(rules=[rule]))) as server:
        run = run_cli_measured(
            [
                "run",
                str(_manifest(workdir, catalog)),
                "--out",
                str(out),
                "--base-url",
                server.base_url,
                "--quiet",
            ],
            env=_base_env(workdir),
            timeout_s=_WALL_LIMIT_S * 2,
        )
    outcome = _outcome("query-bomb", name, run)
    if run.exit_code != 1:
        outcome.problems.append(f"exit {run.exit_code}: series the server could not describe fail (exit 1)")
    _expect_text(outcome, run, ["getSeriesMetadata", needle])
    return outcome


def _metadata_gzip_bomb(workdir: Path) -> ServerCaseOutcome:
    return _metadata_bomb(workdir, encoding="gzip", name="metadata-gzip-512mib", needle="decompression bomb")


def _metadata_plain_bomb(workdir: Path) -> ServerCaseOutcome:
    return _metadata_bomb(workdir, encoding="identity", name="metadata-plain-512mib", needle="body-too-large")


# ---- redirect -------------------------------------------------------------------------------


def _run_with_download_fault(workdir: Path, location: str, name: str) -> tuple[ServerCaseOutcome, str]:
    catalog = _catalog()
    victim = catalog.series[0].uid
    rule = FaultRule(FaultKind.REDIRECT, series_uid=victim, times=None, location=location)
    out = workdir / "out"
    with serve_in_background(FakeNBIA(catalog, faults=FaultPlan(rules=[rule]))) as server:
        run = run_cli_measured(
            [
                "run",
                str(_manifest(workdir, catalog)),
                "--out",
                str(out),
                "--base-url",
                server.base_url,
                "--quiet",
            ],
            env=_base_env(workdir),
            timeout_s=_WALL_LIMIT_S * 2,
        )
    outcome = _outcome("redirect", name, run)
    if run.exit_code != 1:
        outcome.problems.append(f"exit {run.exit_code}: one failed series is exit 1 (never 2 or 3)")
    _report_counts(out, outcome)
    expected_done = len(catalog.series) - 1
    if outcome.series_done != expected_done or outcome.series_failed != 1:
        outcome.problems.append(
            f"done {outcome.series_done}, failed {outcome.series_failed}: expected {expected_done} and 1"
        )
    return outcome, run.stdout + run.stderr


def _malformed_location(workdir: Path) -> ServerCaseOutcome:
    outcome, text = _run_with_download_fault(workdir, "http://[::1", "malformed-location")
    if "bad-redirect" not in text and "redirect" not in text:
        outcome.problems.append(f"the failure does not say redirect: {text[-300:]!r}")
    return outcome


def _download_cross_origin(workdir: Path) -> ServerCaseOutcome:
    with RecordingListener() as other:
        outcome, text = _run_with_download_fault(
            workdir, other.url + "/elsewhere.zip", "download-cross-origin"
        )
    if other.requests:
        outcome.problems.append(f"the other origin received {len(other.requests)} request(s)")
    if "redirect" not in text:
        outcome.problems.append(f"the failure does not say redirect: {text[-300:]!r}")
    return outcome


def _token_cross_origin(workdir: Path) -> ServerCaseOutcome:
    with RecordingListener() as other:
        rule = FaultRule(FaultKind.TOKEN_REDIRECT, times=None, location=other.url + "/nbia-api/oauth/token")
        fake = FakeNBIA(_catalog(), faults=FaultPlan(rules=[rule]), users={"reader": _PASSWORD})
        with serve_in_background(fake) as background:
            env = {**_base_env(workdir), "TCIA_FETCH_USERNAME": "reader", "TCIA_FETCH_PASSWORD": _PASSWORD}
            run = run_cli_measured(
                ["query", "collections", "--base-url", background.server.legacy_base_url(2)],
                env=env,
                timeout_s=_WALL_LIMIT_S * 2,
            )
    outcome = _outcome("redirect", "token-cross-origin", run)
    if run.exit_code != 3:
        outcome.problems.append(f"exit {run.exit_code}: a refused token request is an auth failure (exit 3)")
    if other.requests:
        leaked = any(request.contains(_PASSWORD) for request in other.requests)
        outcome.problems.append(
            f"the other origin received {len(other.requests)} request(s)"
            + (" with the password" if leaked else "")
        )
    if _PASSWORD in run.stdout + run.stderr:
        outcome.problems.append("the password appears in the output")
    host_port = other.url.removeprefix("http://")
    _expect_text(outcome, run, [host_port, "redirect"])
    return outcome


def cases() -> list[ServerCase]:
    """The cases of both families.

    Every body is cut within its first MiBs, so no case is slow in itself; each costs a CLI
    start. Those whose end state the in-process tests (tests/api/test_bodies.py,
    test_redirects.py) already prove are ``heavy``, which keeps CI's reduced campaign to four.
    """
    return [
        ServerCase("query-bomb", "collections-gzip-1gib", _collections_gzip_bomb),
        ServerCase("query-bomb", "collections-endless", _collections_endless, heavy=True),
        ServerCase("query-bomb", "metadata-gzip-512mib", _metadata_gzip_bomb),
        ServerCase("query-bomb", "metadata-plain-512mib", _metadata_plain_bomb, heavy=True),
        ServerCase("redirect", "malformed-location", _malformed_location),
        ServerCase("redirect", "download-cross-origin", _download_cross_origin, heavy=True),
        ServerCase("redirect", "token-cross-origin", _token_cross_origin),
    ]
