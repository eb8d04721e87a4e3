"""The "archive" family of the hostile-server campaign: lies about and inside a series archive.

* ``md5-bomb``: one series' ``md5hashes.csv`` inflates to 1 GiB of blank lines (a few hundred KB
  on the wire). The list is parsed as it streams and capped by the DICOM members seen, so the
  series fails with an md5-list reason after a few KiB, on every attempt, and memory stays flat.
  Before issue 14 this run peaked at 6.4 GB.
* ``implausible-claims``: the metadata of one series claims 6,000,000 images and another's an
  exabyte. Both are refused while planning as implausible server data, never requested, and
  reported; the rest of the job is fetched.
* ``free-space``: one series claims more bytes than the destination's filesystem has free (yet
  less than the plausibility bound). It is set aside before its first byte is requested, instead
  of a deflate bomb filling the disk; the rest of the job is fetched, then the run ends as a full
  disk does (exit 3) with a message naming the series and the free space.

Each case judges the end state: the exit code, the report naming exactly the bad series with a
reason that says why, every other series done, nothing of the bad series in the destination,
no staging leftovers, and the CLI's peak RSS under 200 MB.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from tcia_fetch.campaign.hostile_server import ServerCase, ServerCaseOutcome, run_cli_measured
from tcia_fetch.series.plausible import MAX_PLAUSIBLE_BYTES
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, serve_in_background

__all__ = ["FAMILY", "PEAK_RSS_LIMIT_MB", "cases"]

FAMILY = "archive"
#: Issue 14's bound for every hostile body.
PEAK_RSS_LIMIT_MB = 200.0
_STATE_DIR = ".tcia-fetch"
#: What a bad series' failure must look like: words its reason may say, references it may have.
_Expected = tuple[tuple[str, ...], tuple[str, ...]]


def cases() -> list[ServerCase]:
    """The family's cases; all are light enough for CI (the bomb stops after a few KiB)."""
    return [
        ServerCase(FAMILY, "md5-bomb", _md5_bomb),
        ServerCase(FAMILY, "implausible-claims", _implausible_claims),
        ServerCase(FAMILY, "free-space", _free_space),
    ]


def _catalog() -> Catalog:
    return Catalog.generate(
        seed=14,
        collections=1,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(3, 5),
        instance_bytes=(3_000, 12_000),
    )


def _md5_bomb(workdir: Path) -> ServerCaseOutcome:
    catalog = _catalog()
    target = catalog.series[0].uid
    rule = FaultRule(FaultKind.MD5_LIST_BOMB, series_uid=target, times=None)
    return _run_case(
        workdir,
        "md5-bomb",
        catalog,
        [rule],
        bad={target: (("md5hashes.csv",), ("md5-mismatch", "archive-too-large"))},
        must_request=True,
    )


def _implausible_claims(workdir: Path) -> ServerCaseOutcome:
    catalog = _catalog()
    many, huge = catalog.series[0].uid, catalog.series[1].uid
    rules = [
        FaultRule(FaultKind.CLAIM_FIGURES, series_uid=many, times=None, image_count=6_000_000),
        FaultRule(
            FaultKind.CLAIM_FIGURES, series_uid=huge, times=None, image_count=None, total_bytes=1 << 60
        ),
    ]
    expected: _Expected = (("implausible",), ("implausible-figures",))
    return _run_case(
        workdir,
        "implausible-claims",
        catalog,
        rules,
        bad={many: expected, huge: expected},
        must_request=False,
    )


def _free_space(workdir: Path) -> ServerCaseOutcome:
    catalog = _catalog()
    target = catalog.series[0].uid
    free = shutil.disk_usage(workdir).free
    claim = min(free + (1 << 30), MAX_PLAUSIBLE_BYTES)
    rule = FaultRule(
        FaultKind.CLAIM_FIGURES, series_uid=target, times=None, image_count=None, total_bytes=claim
    )
    if claim == MAX_PLAUSIBLE_BYTES:
        # More than 4 TiB free: no plausible claim exceeds it, and the series is refused as
        # implausible instead, which protects the disk just as well.
        expected: _Expected = (("implausible",), ("implausible-figures",))
        return _run_case(workdir, "free-space", catalog, [rule], bad={target: expected}, must_request=False)
    return _run_case(
        workdir, "free-space", catalog, [rule], bad={}, unfit=target, must_request=False, exit_code=3
    )


def _run_case(
    workdir: Path,
    name: str,
    catalog: Catalog,
    rules: Sequence[FaultRule],
    *,
    bad: dict[str, _Expected],
    must_request: bool,
    unfit: str | None = None,
    exit_code: int = 1,
) -> ServerCaseOutcome:
    """Run the job of every catalog series against the hostile fake and judge the end state.

    ``bad`` maps each series that must fail to the words its reason may say (one of them) and the
    references it may have. ``unfit``: a series that must be set aside for lack of space and
    named in the run's fatal error (exit 3) after the rest is done. ``must_request``: whether the
    bad series may be downloaded at all (an md5 bomb is only seen by downloading; an implausible
    or unfit claim must never cost a request).
    """
    outcome = ServerCaseOutcome(FAMILY, name)
    uids = [entry.uid for entry in catalog.series]
    job = workdir / "job.toml"
    listed = ", ".join(f'"{uid}"' for uid in uids)
    job.write_text(f"[download]\nconcurrency = 2\nintegrity_attempts = 2\n[series]\nuids = [{listed}]\n")
    out = workdir / "out"
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=list(rules)))
    with serve_in_background(fake) as server:
        run = run_cli_measured(
            ["run", str(job), "--out", str(out), "--base-url", server.base_url, "--quiet"], timeout_s=240.0
        )
        requested = {
            record.query.get("SeriesInstanceUID", "")
            for record in server.server.request_log
            if record.endpoint in ("getImage", "getImageWithMD5Hash")
        }
    outcome.exit_code = run.exit_code
    outcome.peak_rss_mb = run.peak_rss_mb
    problems = outcome.problems
    if run.timed_out:
        problems.append("the run did not finish within 240 s")
    if run.exit_code != exit_code:
        problems.append(
            f"exit code {run.exit_code}, expected {exit_code}: {(run.stdout + run.stderr)[-300:]!r}"
        )
    if run.peak_rss_mb >= PEAK_RSS_LIMIT_MB:
        problems.append(f"peak RSS {run.peak_rss_mb} MB, limit {PEAK_RSS_LIMIT_MB} MB")
    report = _report(out)
    if report is None:
        problems.append("no last-report.json")
        return outcome
    done, failed = report.get("done"), report.get("failed")
    outcome.series_done = done if isinstance(done, int) else None
    outcome.series_failed = failed if isinstance(failed, int) else None
    refused = [unfit] if unfit is not None else []
    problems += _judge_report(report, uids, bad, len(bad) + len(refused))
    if unfit is not None:
        fatal = str(report.get("fatal_error") or "")
        if unfit not in fatal or "free space" not in fatal:
            problems.append(f"the fatal error does not name {unfit} and the free space: {fatal[:300]!r}")
        if unfit not in run.stdout + run.stderr:
            problems.append(f"the output does not name {unfit}")
    for uid in [*bad, *refused]:
        if not must_request and uid in requested:
            problems.append(f"{uid} was requested although its figures had to be refused first")
        leaks = [p for p in out.rglob(f"*{uid}*") if _STATE_DIR not in p.relative_to(out).parts]
        if leaks:
            problems.append(f"{uid} left {leaks[:3]} in the destination")
    staging = out / _STATE_DIR / "staging"
    if staging.exists() and any(staging.iterdir()):
        problems.append(f"staging not cleaned: {sorted(p.name for p in staging.iterdir())[:3]}")
    if not (run.stdout + run.stderr).strip():
        problems.append("the run printed nothing about the failed series")
    return outcome


def _report(out: Path) -> dict[str, object] | None:
    path = out / _STATE_DIR / "last-report.json"
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _judge_report(
    report: dict[str, object], uids: list[str], bad: dict[str, _Expected], not_done: int
) -> list[str]:
    problems: list[str] = []
    expected_done = len(uids) - not_done
    if report.get("done") != expected_done:
        problems.append(f"{report.get('done')} series done, expected the {expected_done} good ones")
    failures = report.get("failures")
    rows = [row for row in failures if isinstance(row, dict)] if isinstance(failures, list) else []
    failed = {str(row.get("SeriesInstanceUID")): row for row in rows}
    if set(failed) != set(bad):
        problems.append(f"failures name {sorted(failed)}, expected exactly {sorted(bad)}")
    for uid, (words, references) in bad.items():
        row = failed.get(uid)
        if row is None:
            continue
        reason, reference = str(row.get("reason", "")), str(row.get("reference", ""))
        if reference not in references:
            problems.append(f"{uid}: reference {reference!r}, expected one of {references}")
        if not any(word.lower() in reason.lower() for word in words):
            problems.append(f"{uid}: reason {reason[:200]!r} says none of {words}")
    return problems
