"""The fault matrix (reliability.md §3.1 A/B/C/F rows that a loopback fake can inject), as data.

Each :class:`FaultScenario` names one fault, how the fake injects it, and the end state it
must lead to: ``verified`` (the series ends byte-exact on disk) or ``reported`` (the series
is listed as failed with ``reference`` and nothing of it is published). :func:`run_scenario`
runs the real engine (``fetch``) against an in-process :class:`FakeNBIA`, then judges the
destination with :mod:`tcia_fetch.campaign.oracle` and checks politeness (I7) from the fake's
request log. The pytest fault matrix and ``python -m tcia_fetch.campaign`` share this table,
so the figures the campaign prints are the tests' own verdicts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

from tcia_fetch.campaign.oracle import DataLoss, judge_destination, published_series
from tcia_fetch.engine.report import RunReport
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.errors import TciaFetchError
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, RequestRecord

__all__ = [
    "FAST_RETRY",
    "RANDOM_MIX_KINDS",
    "SCENARIOS",
    "FaultScenario",
    "MixOutcome",
    "ScenarioOutcome",
    "download_requests",
    "matrix_catalog",
    "mix_catalog",
    "politeness_violations",
    "run_random_mix",
    "run_scenario",
    "write_uid_job",
]

#: Quick retries so the matrix runs in seconds; Retry-After hints are still honoured in full.
FAST_RETRY = RetryPolicy(attempts=4, integrity_attempts=3, base_s=0.01, cap_s=0.05, floor_s=0.01)
_DOWNLOAD_ENDPOINTS = frozenset({"getImage", "getImageWithMD5Hash"})
#: Slack for scheduling and for the fake logging a request a little after it arrived.
_TIMING_SLACK_S = 0.05
#: How late the fake may log a request of *another* series that the client decided to send before
#: a 429 reached it (a worker past the gate still creates its staging directory in a thread and
#: opens a connection): one busy process's scheduling delay on a loaded 2-core machine, with room.
_UNRELATED_SLACK_S = 0.5

Expect = Literal["verified", "reported"]
RuleBuilder = Callable[[str], list[FaultRule]]


@dataclass(frozen=True)
class FaultScenario:
    """One row of the matrix. ``rules(target_uid)`` builds the fault plan for the target series.

    ``fault_class`` groups rows in the report (throttle, server-error, transport, integrity,
    metadata, permanent, outage). ``retry_after_s`` (when the fault sends one) is the pause the
    run must keep: no download request may start before it expires (I7).
    """

    name: str
    fault_class: str
    rules: RuleBuilder
    expect: Expect
    reference: str | None = None
    retry_after_s: float | None = None
    restricted_target: bool = False
    max_duration_s: float = 20.0
    max_target_downloads: int | None = None
    max_faults_injected: int | None = None
    breaker_must_open: bool = False
    job_extra: str = ""


@dataclass
class ScenarioOutcome:
    """What one scenario did and whether the end state was the promised one."""

    scenario: FaultScenario
    faults_injected: int
    duration_s: float
    report: RunReport | None
    problems: list[str] = field(default_factory=list)
    loss: DataLoss = field(default_factory=DataLoss)
    requests: list[RequestRecord] = field(default_factory=list)
    fatal: str | None = None

    @property
    def survived(self) -> bool:
        """True when the end state, politeness and the data-loss figures are all as promised."""
        return not self.problems and self.loss.total == 0


def _once(kind: FaultKind, **params: object) -> RuleBuilder:
    return lambda uid: [FaultRule(kind, series_uid=uid, times=1, **params)]


def _always(kind: FaultKind, **params: object) -> RuleBuilder:
    return lambda uid: [FaultRule(kind, series_uid=uid, times=None, **params)]


def _server_wide(kind: FaultKind, **params: object) -> RuleBuilder:
    return lambda uid: [FaultRule(kind, series_uid=None, times=None, **params)]


SCENARIOS: tuple[FaultScenario, ...] = (
    FaultScenario(
        "429 Retry-After seconds",
        "throttle",
        _once(FaultKind.RATE_LIMIT, retry_after="1"),
        "verified",
        retry_after_s=1.0,
    ),
    FaultScenario(
        "429 Retry-After HTTP-date",
        "throttle",
        _once(FaultKind.RATE_LIMIT_DATE, retry_in_s=2),
        "verified",
        retry_after_s=2.0,
    ),
    FaultScenario(
        "429 HTTP-date, server clock +10 min",
        "throttle",
        _once(FaultKind.RATE_LIMIT_DATE, retry_in_s=2, clock_skew_s=600),
        "verified",
        retry_after_s=2.0,
    ),
    FaultScenario(
        "429 HTTP-date, server clock -10 min",
        "throttle",
        _once(FaultKind.RATE_LIMIT_DATE, retry_in_s=2, clock_skew_s=-600),
        "verified",
        retry_after_s=2.0,
    ),
    FaultScenario("500", "server-error", _once(FaultKind.SERVER_ERROR), "verified"),
    FaultScenario("502", "server-error", _once(FaultKind.BAD_GATEWAY), "verified"),
    FaultScenario("503", "server-error", _once(FaultKind.UNAVAILABLE), "verified"),
    FaultScenario(
        "503 Retry-After 1",
        "throttle",
        _once(FaultKind.UNAVAILABLE, retry_after="1"),
        "verified",
        retry_after_s=1.0,
    ),
    FaultScenario("504", "server-error", _once(FaultKind.GATEWAY_TIMEOUT), "verified"),
    FaultScenario(
        "502 on every attempt",
        "server-error",
        _always(FaultKind.BAD_GATEWAY),
        "reported",
        reference="server-error",
        max_target_downloads=4,
    ),
    FaultScenario(
        "connection reset mid-stream", "transport", _once(FaultKind.RESET, after_bytes=3000), "verified"
    ),
    FaultScenario(
        "connection closed mid-stream", "transport", _once(FaultKind.CUT, after_bytes=3000), "verified"
    ),
    FaultScenario(
        "stalled stream",
        "transport",
        _once(FaultKind.STALL, after_bytes=1000, stall_s=30.0),
        "verified",
        max_duration_s=10.0,
    ),
    FaultScenario("truncated archive", "integrity", _once(FaultKind.TRUNCATE, after_bytes=3000), "verified"),
    FaultScenario(
        "truncated archive every time",
        "integrity",
        _always(FaultKind.TRUNCATE, after_bytes=3000),
        "reported",
        max_target_downloads=3,
    ),
    FaultScenario("flipped byte (CRC)", "integrity", _once(FaultKind.FLIP_BYTE), "verified"),
    FaultScenario(
        "flipped byte every time",
        "integrity",
        _always(FaultKind.FLIP_BYTE),
        "reported",
        reference="archive-corrupt",
        max_target_downloads=3,
    ),
    FaultScenario("zip short of instances", "integrity", _once(FaultKind.SHORT_ZIP), "verified"),
    FaultScenario(
        "zip short of instances every time",
        "integrity",
        _always(FaultKind.SHORT_ZIP),
        "reported",
        reference="count-mismatch",
        max_target_downloads=3,
    ),
    FaultScenario("wrong md5 list", "integrity", _once(FaultKind.WRONG_MD5), "verified"),
    FaultScenario(
        "wrong md5 list every time",
        "integrity",
        _always(FaultKind.WRONG_MD5),
        "reported",
        reference="md5-mismatch",
        max_target_downloads=3,
    ),
    FaultScenario(
        "wrong getSeriesSize once", "metadata", _once(FaultKind.WRONG_SIZE, delta_bytes=7), "verified"
    ),
    FaultScenario(
        "wrong getSeriesSize always",
        "metadata",
        _always(FaultKind.WRONG_SIZE, delta_bytes=7),
        "reported",
        reference="size-mismatch",
        max_target_downloads=3,
    ),
    FaultScenario("HTML page with status 200", "integrity", _once(FaultKind.HTML_200), "verified"),
    FaultScenario(
        "HTML page with status 200 every time",
        "integrity",
        _always(FaultKind.HTML_200),
        "reported",
        reference="not-an-archive",
        max_target_downloads=3,
    ),
    FaultScenario("empty 200 body", "integrity", _once(FaultKind.EMPTY_200), "verified"),
    FaultScenario(
        "empty 200 body every time",
        "integrity",
        _always(FaultKind.EMPTY_200),
        "reported",
        reference="not-an-archive",
        max_target_downloads=3,
    ),
    FaultScenario(
        "400 not granted",
        "permanent",
        _always(FaultKind.REQUEST_REJECTED),
        "reported",
        reference="series-unavailable",
        max_target_downloads=1,
    ),
    FaultScenario(
        "restricted series",
        "permanent",
        lambda uid: [],
        "reported",
        restricted_target=True,
        max_target_downloads=1,
    ),
    FaultScenario(
        "outage 503 for 3 s",
        "outage",
        _server_wide(FaultKind.OUTAGE, duration_s=3.0, after_requests=2),
        "verified",
        max_faults_injected=16,
    ),
    FaultScenario(
        "outage, connections dropped for 3 s",
        "outage",
        _server_wide(FaultKind.OUTAGE, duration_s=3.0, after_requests=2, mode="close"),
        "verified",
        breaker_must_open=True,
        max_faults_injected=16,
    ),
)


def matrix_catalog(seed: int = 11) -> Catalog:
    """A small catalog (one collection, 8 series of 2-4 small instances): each scenario takes seconds."""
    return Catalog.generate(
        seed=seed,
        collections=1,
        patients_per_collection=2,
        series_per_study=4,
        instances_per_series=(2, 4),
        instance_bytes=(2_000, 9_000),
    )


def mix_catalog(seed: int = 13) -> Catalog:
    """24 small series over two collections, for the random fault mix."""
    return Catalog.generate(
        seed=seed,
        collections=2,
        patients_per_collection=3,
        series_per_study=4,
        instances_per_series=(2, 4),
        instance_bytes=(2_000, 9_000),
    )


def write_uid_job(path: Path, uids: Sequence[str], *, concurrency: int = 3, extra: str = "") -> Path:
    """A TOML job naming ``uids`` explicitly, with a 1 s stall timeout."""
    listed = ", ".join(f'"{uid}"' for uid in uids)
    path.write_text(
        f"[download]\nconcurrency = {concurrency}\nstall_timeout_s = 1\n{extra}\n"
        f"[series]\nuids = [{listed}]\n",
        encoding="utf-8",
    )
    return path


def download_requests(requests: Sequence[RequestRecord], uid: str | None = None) -> list[RequestRecord]:
    """Download requests (optionally for one series), in arrival order."""
    return sorted(
        (
            r
            for r in requests
            if r.endpoint in _DOWNLOAD_ENDPOINTS and (uid is None or r.query.get("SeriesInstanceUID") == uid)
        ),
        key=lambda r: r.started_at,
    )


def politeness_violations(
    requests: Sequence[RequestRecord], *, retry_after_s: float, http_date: bool, wall_minus_monotonic: float
) -> list[str]:
    """Download requests that started while a 429/503's Retry-After was still running (I7).

    For the delta-seconds form the pause runs ``retry_after_s`` from the response. For the
    HTTP-date form the fake's ``Date`` is the whole second of the response (the fake floors its
    clock), so the pause ends at ``floor(response wall time) + retry_after_s``.
    """
    problems: list[str] = []
    downloads = download_requests(requests)
    for record in downloads:
        if record.status not in (429, 503):
            continue
        answered = record.started_at + record.duration_s
        if http_date:
            wall = answered + wall_minus_monotonic
            expires = math.floor(wall) + retry_after_s - wall_minus_monotonic
        else:
            expires = answered + retry_after_s
        throttled = record.query.get("SeriesInstanceUID")
        for later in downloads:
            # A request the client sent before this answer reached it cannot be held back. The
            # throttled series' own next request is caused by the answer, so it is judged
            # exactly; another series' request may have been sent before the answer arrived and
            # logged late by a busy fake, so only starts well after the answer count.
            same = later.query.get("SeriesInstanceUID") == throttled
            slack = 0.0 if same else _UNRELATED_SLACK_S
            if answered + slack < later.started_at < expires - _TIMING_SLACK_S:
                problems.append(
                    f"download of {later.query.get('SeriesInstanceUID')} started "
                    f"{later.started_at - answered:.2f} s after a {record.status}, "
                    f"{expires - later.started_at:.2f} s before its Retry-After expired"
                )
    return problems


async def run_scenario(
    scenario: FaultScenario,
    catalog: Catalog,
    workdir: Path,
    *,
    series_count: int = 3,
    policy: RetryPolicy = FAST_RETRY,
) -> ScenarioOutcome:
    """Run one scenario on fresh state in ``workdir`` and judge it."""
    await anyio.to_thread.run_sync(lambda: workdir.mkdir(parents=True, exist_ok=True))
    uids = [entry.uid for entry in catalog.series[:series_count]]
    target = uids[0]
    fake = FakeNBIA(
        catalog,
        faults=FaultPlan(rules=scenario.rules(target)),
        restricted_series=frozenset({target}) if scenario.restricted_target else frozenset(),
    )
    out = workdir / "out"
    job = write_uid_job(workdir / "job.toml", uids, extra=scenario.job_extra)
    report: RunReport | None = None
    fatal: str | None = None
    offset = time.time() - time.monotonic()
    started = time.monotonic()
    async with fake.serve() as server:
        try:
            report = await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=policy)
        except TciaFetchError as exc:
            fatal = f"{type(exc).__name__}: {exc}"
    duration = time.monotonic() - started
    requests = list(fake.request_log)
    fired = sum(fake.stats().faults_fired.values())
    # A restricted series is itself the fault (the server never serves it): count it once.
    outcome = ScenarioOutcome(
        scenario,
        fired if not scenario.restricted_target else 1,
        duration,
        report,
        requests=requests,
        fatal=fatal,
    )
    _judge(outcome, catalog, out, uids, target, offset)
    return outcome


def _judge(
    outcome: ScenarioOutcome, catalog: Catalog, out: Path, uids: list[str], target: str, offset: float
) -> None:
    scenario, report, problems = outcome.scenario, outcome.report, outcome.problems
    if report is None:
        problems.append(f"run ended with a fatal error: {outcome.fatal}")
        return
    failed = {failure.series_uid: failure for failure in report.failures}
    others = [uid for uid in uids if uid != target]
    if scenario.expect == "verified":
        if failed:
            problems.append(f"expected every series verified; failed: {sorted(failed)}")
        if report.exit_code != 0:
            problems.append(f"exit code {report.exit_code}, expected 0")
    else:
        if set(failed) != {target}:
            problems.append(f"expected exactly the target reported, got {sorted(failed)}")
        elif scenario.reference is not None and failed[target].reference != scenario.reference:
            problems.append(f"reported as {failed[target].reference!r}, expected {scenario.reference!r}")
        if report.exit_code != 1:
            problems.append(f"exit code {report.exit_code}, expected 1")
    if outcome.faults_injected == 0:
        problems.append("the fault never fired: the scenario proves nothing")
    if outcome.duration_s > scenario.max_duration_s:
        problems.append(f"took {outcome.duration_s:.1f} s, more than {scenario.max_duration_s} s")
    if scenario.max_target_downloads is not None:
        tries = len(download_requests(outcome.requests, target))
        if tries > scenario.max_target_downloads:
            problems.append(
                f"{tries} download requests for the target, at most {scenario.max_target_downloads}"
            )
    if scenario.retry_after_s is not None:
        problems.extend(
            politeness_violations(
                outcome.requests,
                retry_after_s=scenario.retry_after_s,
                http_date="HTTP-date" in scenario.name,
                wall_minus_monotonic=offset,
            )
        )
    if scenario.max_faults_injected is not None and outcome.faults_injected > scenario.max_faults_injected:
        problems.append(
            f"{outcome.faults_injected} requests met the fault, "
            f"at most {scenario.max_faults_injected}: a retry storm"
        )
    if scenario.breaker_must_open:
        opens = _breaker_opens(report.engine)
        if opens < 1:
            problems.append("the circuit breaker never opened during the outage")
    outcome.loss = judge_destination(out, catalog, planned=uids, reported=list(failed))
    expected_done = others if scenario.expect == "reported" else uids
    on_disk = published_series(out)
    missing = [uid for uid in expected_done if uid not in on_disk]
    if missing:
        problems.append(f"not published: {missing}")
    if scenario.expect == "reported" and target in on_disk:
        problems.append("the failed series was published")


def _breaker_opens(engine: dict[str, Any]) -> int:
    breaker = engine.get("breaker", {})
    value = breaker.get("opens", 0) if isinstance(breaker, dict) else 0
    return int(value) if isinstance(value, int) else 0


#: The download faults a random mix draws from (each with its default parameters).
RANDOM_MIX_KINDS = (
    FaultKind.RATE_LIMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.UNAVAILABLE,
    FaultKind.BAD_GATEWAY,
    FaultKind.GATEWAY_TIMEOUT,
    FaultKind.CUT,
    FaultKind.RESET,
    FaultKind.TRUNCATE,
    FaultKind.SHORT_ZIP,
    FaultKind.FLIP_BYTE,
    FaultKind.WRONG_MD5,
    FaultKind.EMPTY_200,
    FaultKind.HTML_200,
)


@dataclass
class MixOutcome:
    """A run under a random fault mix: faults fired per kind, and what the oracle found."""

    faults_fired: dict[str, int]
    series: int
    done: int
    reported: int
    exit_code: int | None
    loss: DataLoss
    problems: list[str]
    duration_s: float


async def run_random_mix(catalog: Catalog, workdir: Path, *, rate: float = 0.3, seed: int = 0) -> MixOutcome:
    """Every series of ``catalog`` under random download faults at ``rate``: nothing may be lost.

    A series may legitimately end reported (its retries ran out); what may not happen is a
    series done but wrong, a series neither done nor reported, or litter.
    """
    await anyio.to_thread.run_sync(lambda: workdir.mkdir(parents=True, exist_ok=True))
    uids = [entry.uid for entry in catalog.series]
    fake = FakeNBIA(catalog, faults=FaultPlan(random_rate=rate, random_kinds=RANDOM_MIX_KINDS, seed=seed))
    out = workdir / "out"
    job = write_uid_job(workdir / "job.toml", uids)
    problems: list[str] = []
    started = time.monotonic()
    report: RunReport | None = None
    async with fake.serve() as server:
        try:
            report = await fetch(job, RunOptions(out=out, base_url=server.base_url), retry_policy=FAST_RETRY)
        except TciaFetchError as exc:
            problems.append(f"fatal error under a random fault mix: {exc}")
    reported = [failure.series_uid for failure in report.failures] if report is not None else []
    loss = judge_destination(out, catalog, planned=uids, reported=reported)
    if report is not None and report.done + len(reported) != len(uids):
        problems.append(f"{report.done} done + {len(reported)} reported != {len(uids)} planned")
    return MixOutcome(
        faults_fired=fake.stats().faults_fired,
        series=len(uids),
        done=report.done if report is not None else 0,
        reported=len(reported),
        exit_code=report.exit_code if report is not None else None,
        loss=loss,
        problems=problems,
        duration_s=time.monotonic() - started,
    )
