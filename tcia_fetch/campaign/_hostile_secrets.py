"""Hostile-server family "secrets": what a server says back never harms the user.

* ``echo``: one legacy v2 run where the token endpoint echoes the posted form (the password,
  URL-encoded) and, once a token is issued, a query echoes the request headers (the bearer token).
  Judged: neither the password nor any token the fake issued appears (raw or URL-encoded) in
  stdout, stderr, the ``--report`` file or any file under the destination (journal snapshots
  decompressed); both echoes did reach the report (as ``[redacted]``); every state and report file
  is mode 0600; the collection whose queries were not refused was downloaded.
* ``throttle-storm`` / ``throttle-storm-downloads``: 429 with ``Retry-After: 1`` on every request
  (or on downloads only, after a normal planning phase: heavy), forever. Judged: exit 3 with a message
  naming the throttling, within the job's ``max_outage_s`` plus a generous margin, nothing
  published.
* ``control-chars``: ANSI/OSC escapes, BEL, a C1 CSI, a bidi override and rich markup in a
  collection name, in series descriptions and in a download's error text. Judged: none of those
  bytes reaches stdout or stderr of ``query collections`` and ``run``; they are shown as visible
  escapes, and the markup is printed as text rather than interpreted.
* ``formula``: the same text begins with ``=HYPERLINK(...)``. Judged: every server text cell of
  ``metadata.csv`` that begins with a formula trigger carries the leading ``'``, and counts stay
  numbers. (``query --format csv`` is judged in-process, ``tests/cli/test_show.py``.)
"""

from __future__ import annotations

import csv
import stat
from pathlib import Path
from urllib.parse import quote, quote_plus

import zstandard

from tcia_fetch.campaign.hostile_server import CliRun, ServerCase, ServerCaseOutcome, run_cli_measured
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, serve_in_background
from tcia_fetch.untrusted import FORMULA_TRIGGERS

__all__ = ["cases"]

FAMILY = "secrets"
#: Needs URL-encoding in a form (``+``, ``/``, ``=``, ``&``, a space): the echo carries it encoded.
ECHO_PASSWORD = "Echo+pw/5d1e=7b2c 9a&x"
ECHO_USER = "echo-user-31c4"
#: The outage window the storm cases configure (the default is 1800 s).
STORM_WINDOW_S = 3.0
_STORM_MARGIN_S = 45.0
_RUN_TIMEOUT_S = 120.0
#: Bytes the terminal would act on: ESC, BEL, C1 CSI (UTF-8), RLO (UTF-8).
_TERMINAL_BYTES = {"ESC": "\x1b", "BEL": "\x07", "C1 CSI": "\x9b", "bidi override": "\u202e"}


def _catalog(collections: int = 1) -> Catalog:
    return Catalog.generate(
        seed=14,
        collections=collections,
        patients_per_collection=1,
        series_per_study=2,
        instances_per_series=(2, 3),
        instance_bytes=(2_000, 6_000),
    )


def _job(workdir: Path, collections: list[str], *, download: str = "") -> Path:
    job = workdir / "job.toml"
    queries = "".join(f'[[query]]\ncollection = ["{name}"]\n' for name in collections)
    job.write_text(f"[download]\nconcurrency = 2\n{download}\n{queries}", encoding="utf-8")
    return job


def _readable(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".zst":
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            return reader.read()
    return data


def _state_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / ".tcia-fetch").rglob("*") if p.is_file())


def _check_private(paths: list[Path], outcome: ServerCaseOutcome) -> None:
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            outcome.problems.append(f"{path.name} is mode {mode:04o}, not private (0600)")


def _note_run(outcome: ServerCaseOutcome, run: CliRun) -> None:
    outcome.exit_code = run.exit_code
    outcome.peak_rss_mb = max(outcome.peak_rss_mb or 0.0, run.peak_rss_mb)
    if run.timed_out:
        outcome.problems.append(f"the CLI was still running after {_RUN_TIMEOUT_S:.0f} s")


# --- echo -----------------------------------------------------------------------------------------


def _echo(workdir: Path) -> ServerCaseOutcome:
    outcome = ServerCaseOutcome(FAMILY, "echo")
    # Three collections, one attempt per query: the first token request is echoed (the password;
    # that query fails), the next one works and the first query sent with it is answered with the
    # headers echoed (the token; that query fails too), and the third collection downloads.
    catalog = _catalog(collections=3)
    names = sorted({entry.collection for entry in catalog.series})
    env = {"TCIA_FETCH_USERNAME": ECHO_USER, "TCIA_FETCH_PASSWORD": ECHO_PASSWORD}
    out = workdir / "out"
    report = workdir / "report.json"
    job = _job(workdir, names, download="attempts = 1")
    plan = FaultPlan(
        rules=[FaultRule(FaultKind.ECHO_TOKEN, times=1), FaultRule(FaultKind.ECHO_HEADERS, times=1)]
    )
    fake = FakeNBIA(catalog, faults=plan, users={ECHO_USER: ECHO_PASSWORD})
    with serve_in_background(fake) as background:
        args = ["run", str(job), "--out", str(out), "--report", str(report)]
        args += ["--base-url", background.server.legacy_base_url(2)]
        run = run_cli_measured(args, env=env, timeout_s=_RUN_TIMEOUT_S)
    _note_run(outcome, run)
    outputs = [("stdout", run.stdout.encode()), ("stderr", run.stderr.encode())]
    if report.is_file():
        outputs.append(("--report", report.read_bytes()))
    else:
        outcome.problems.append("no --report file was written")
    log = list(fake.request_log)
    for status, what in ((500, "the posted form"), (400, "the request headers")):
        if not any(record.status == status for record in log):
            outcome.problems.append(f"the fake never echoed {what} (no HTTP {status})")
    tokens = {r.headers["Authorization"].partition(" ")[2] for r in log if "Authorization" in r.headers}
    tokens.discard("")
    if not tokens:
        outcome.problems.append("no token was issued: the header echo carried nothing to leak")
    if run.exit_code != 1:
        outcome.problems.append(
            f"exit {run.exit_code}, expected 1 (two queries refused); {run.stderr[-300:]!r}"
        )
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        outputs.append((str(path.relative_to(workdir)), _readable(path)))
    canaries = {ECHO_PASSWORD: "password", **{token: "token" for token in tokens}}
    for secret, what in list(canaries.items()):
        for variant in _encodings(secret):
            canaries.setdefault(variant, f"{what} (encoded)")
    for where, data in outputs:
        for canary, what in canaries.items():
            if canary.encode() in data:
                outcome.problems.append(f"{what} found in {where}")
    report_text = report.read_text(encoding="utf-8") if report.is_file() else ""
    if report_text.count("[redacted]") < 2:
        outcome.problems.append("the report does not show both echoes as [redacted]: they never reached it")
    _check_private([*_state_files(out), report], outcome)
    outcome.series_done = len({p.parent for p in out.rglob("*.dcm")})
    if not outcome.series_done:
        outcome.problems.append("nothing was downloaded from the collection whose queries were not refused")
    return outcome


def _encodings(secret: str) -> set[str]:
    return {quote_plus(secret, safe=""), quote(secret, safe="")} - {secret}


# --- throttle storm -------------------------------------------------------------------------------


def _storm(workdir: Path, *, scope: str) -> ServerCaseOutcome:
    name = "throttle-storm" if scope == "all" else "throttle-storm-downloads"
    outcome = ServerCaseOutcome(FAMILY, name)
    catalog = _catalog()
    names = sorted({entry.collection for entry in catalog.series})
    rule = FaultRule(FaultKind.THROTTLE_STORM, times=None, retry_after="1", scope=scope)
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=[rule]))
    out = workdir / "out"
    job = _job(workdir, names, download=f"max_outage_s = {STORM_WINDOW_S:g}")
    with serve_in_background(fake) as background:
        args = ["run", str(job), "--out", str(out), "--base-url", background.server.base_url]
        run = run_cli_measured(args, timeout_s=_RUN_TIMEOUT_S)
    _note_run(outcome, run)
    throttled = sum(1 for record in fake.request_log if record.status == 429)
    if run.exit_code != 3:
        outcome.problems.append(f"exit {run.exit_code}, not 3 (an outage); stderr: {run.stderr[-300:]!r}")
    if "429" not in run.stderr:
        outcome.problems.append(f"the message does not name the throttling: {run.stderr[-300:]!r}")
    if run.wall_s > STORM_WINDOW_S + _STORM_MARGIN_S:
        outcome.problems.append(f"took {run.wall_s:.1f} s for a {STORM_WINDOW_S:g} s window")
    if throttled < 2:
        outcome.problems.append(f"only {throttled} throttled request(s): the storm did not happen")
    if scope == "downloads" and not any(r.endpoint == "getImage" for r in fake.request_log):
        outcome.problems.append("no download was attempted: planning did not finish")
    outcome.series_done = sum(1 for p in out.rglob("*.dcm"))
    if outcome.series_done:
        outcome.problems.append(f"{outcome.series_done} files published from a server that only throttled")
    return outcome


# --- control characters and formulas --------------------------------------------------------------


def _terminal_problems(where: str, text: str) -> list[str]:
    return [
        f"{what} from the server reached {where}" for what, char in _TERMINAL_BYTES.items() if char in text
    ]


def _control_chars(workdir: Path) -> ServerCaseOutcome:
    outcome = ServerCaseOutcome(FAMILY, "control-chars")
    catalog = _catalog()
    names = sorted({entry.collection for entry in catalog.series})
    failing = catalog.series[0].uid
    fake = FakeNBIA(
        catalog,
        faults=FaultPlan(
            rules=[
                FaultRule(FaultKind.HOSTILE_NAMES, times=None),
                FaultRule(FaultKind.HOSTILE_ERROR, series_uid=failing, times=None),
            ]
        ),
    )
    out = workdir / "out"
    job = _job(workdir, names)
    with serve_in_background(fake) as background:
        base = ["--base-url", background.server.base_url]
        listing = run_cli_measured(["query", "collections", *base], timeout_s=_RUN_TIMEOUT_S)
        _note_run(outcome, listing)
        run = run_cli_measured(["run", str(job), "--out", str(out), *base], timeout_s=_RUN_TIMEOUT_S)
        _note_run(outcome, run)
    for label, result in (("query collections", listing), ("run", run)):
        outcome.problems += _terminal_problems(f"stdout of {label}", result.stdout)
        outcome.problems += _terminal_problems(f"stderr of {label}", result.stderr)
    if listing.exit_code != 0:
        outcome.problems.append(f"query collections exited {listing.exit_code}: {listing.stderr[-300:]!r}")
    if "\\x1b" not in listing.stdout or "[link=http://evil.example/]" not in listing.stdout:
        outcome.problems.append("the hostile collection name is not shown as text with visible escapes")
    if run.exit_code != 1:
        outcome.problems.append(f"run exited {run.exit_code}, expected 1 (one series refused)")
    if "\\x1b" not in run.stdout + run.stderr:
        outcome.problems.append("the hostile error text is not shown with visible escapes")
    outcome.series_done = len({p.parent for p in out.rglob("*.dcm")})
    outcome.series_failed = 1 if run.exit_code == 1 else None
    return outcome


def _formula_cells(rows: list[dict[str, str]], columns: tuple[str, ...], where: str) -> list[str]:
    problems = []
    prefixed = 0
    for row in rows:
        for column in columns:
            value = row.get(column) or ""
            if value and value[0] in FORMULA_TRIGGERS:
                problems.append(f"{where}: {column} begins with {value[0]!r} (a formula): {value[:40]!r}")
            prefixed += value.startswith("'=")
    if not prefixed:
        problems.append(f"{where}: no prefixed cell in {columns}: the hostile text never arrived")
    return problems


def _formula(workdir: Path) -> ServerCaseOutcome:
    outcome = ServerCaseOutcome(FAMILY, "formula")
    catalog = _catalog()
    names = sorted({entry.collection for entry in catalog.series})
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=[FaultRule(FaultKind.HOSTILE_NAMES, times=None)]))
    out = workdir / "out"
    job = _job(workdir, names)
    with serve_in_background(fake) as background:
        base = ["--base-url", background.server.base_url]
        run = run_cli_measured(["run", str(job), "--out", str(out), *base], timeout_s=_RUN_TIMEOUT_S)
        _note_run(outcome, run)
    if run.exit_code != 0:
        outcome.problems.append(f"run exited {run.exit_code}: {run.stderr[-300:]!r}")
    metadata = out / "metadata.csv"
    if not metadata.is_file():
        outcome.problems.append("no metadata.csv")
        return outcome
    with open(metadata, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    outcome.series_done = len(rows)
    outcome.problems += _formula_cells(rows, ("Series Description", "Manufacturer"), "metadata.csv")
    for row in rows:
        if not row.get("Number of Images", "").isdigit():
            outcome.problems.append(
                f"metadata.csv: Number of Images {row.get('Number of Images')!r} is not a number"
            )
    return outcome


def cases() -> list[ServerCase]:
    """The family's cases, a few small series each.

    CI runs the light ones; the downloads-only storm and the formula case are marked heavy because
    cheaper tests hold the same end states (the first storm case; the in-process metadata.csv and
    CSV tests), and every CLI start costs CI seconds.
    """
    return [
        ServerCase(FAMILY, "echo", _echo),
        ServerCase(FAMILY, "throttle-storm", lambda workdir: _storm(workdir, scope="all")),
        ServerCase(
            FAMILY, "throttle-storm-downloads", lambda workdir: _storm(workdir, scope="downloads"), heavy=True
        ),
        ServerCase(FAMILY, "control-chars", _control_chars),
        # metadata.csv's cells are also judged in-process (tests/store/test_metadata_formulas.py)
        ServerCase(FAMILY, "formula", _formula, heavy=True),
    ]
