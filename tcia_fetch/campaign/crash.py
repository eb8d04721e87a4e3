"""The crash campaign: SIGKILL the real CLI at random moments, rerun it, check the invariants each time.

One *round* is a fresh destination and the same job: start ``tcia-fetch run``, sleep a random
time drawn over the whole length of a run (startup, planning, downloading, verifying,
publishing, writing the report), SIGKILL it if it still runs, inspect the frozen destination,
and start again (a *resume*). When a run ends by itself the round is over: the destination
must then be complete (every series verified-complete, or reported), clean (no partial,
temporary, staging or trash file), and nothing published earlier may have changed. Then the
next round starts on a new destination, until the number of kills is reached.

After every kill the oracle checks what must hold even mid-crash: nothing unverified at a
final path (I1), nothing marked done that differs from the server (D-1), nothing published
earlier altered (D-3). Which phase each kill hit is read from the frozen destination: a
staging directory still filling (downloading), one holding every file (verifying), a
``verified`` journal record without ``done`` (publishing), all series done but the process
alive (finishing), none of these (planning).

Random kills almost never land inside start-up's narrow windows (creating the lock, taking
over a dead run's lock, reconciliation), so *start-up rounds* kill there by name
(``TCIA_FETCH_CRASHPOINT``, :mod:`tcia_fetch._crashpoint`). One start-up round per point: a
run is killed right after its first publish (leaving a dead run's lock, staging and a
``verified`` record), the next run starts at once and is killed at the named point, the next
starts at once, with no pause and no inspection in between, and must finish with exit 0, a
complete and clean destination, and nothing published earlier altered.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from tcia_fetch._crashpoint import CRASH_POINT_ENV
from tcia_fetch.campaign.oracle import (
    STATE_DIR_NAME,
    DataLoss,
    FileStamp,
    journal_statuses,
    judge_destination,
    outside_paths,
    published_series,
    series_stamps,
)
from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.testing import Catalog, FakeNBIA, LoadModel

__all__ = ["PHASES", "CrashResult", "crash_catalog", "run_crash_campaign"]

PHASES = ("planning", "downloading", "verifying", "publishing", "finishing")
_RUN_TIMEOUT_S = 300.0


@dataclass
class CrashResult:
    """Figures of one crash campaign."""

    kills: int = 0
    resumes: int = 0
    rounds_completed: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    exit_codes: Counter[int] = field(default_factory=Counter)
    series_per_round: int = 0
    loss: DataLoss = field(default_factory=DataLoss)
    problems: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: Kills at a named start-up point (each followed at once by a restart that must finish).
    startup_kills: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready figures."""
        return {
            "kills": self.kills,
            "resumes": self.resumes,
            "rounds_completed": self.rounds_completed,
            "kills_by_phase": {phase: self.phases.get(phase, 0) for phase in PHASES},
            "exit_codes": {str(code): count for code, count in sorted(self.exit_codes.items())},
            "series_per_round": self.series_per_round,
            "data_lost": self.loss.counts(),
            "startup_kills": dict(sorted(self.startup_kills.items())),
            "problems": self.problems,
            "duration_s": round(self.duration_s, 1),
        }


def crash_catalog(seed: int = 31) -> Catalog:
    """12 series of 4-10 instances of 40-90 kB: runs of a few seconds at the campaign's byte rate."""
    return Catalog.generate(
        seed=seed,
        collections=2,
        patients_per_collection=2,
        series_per_study=3,
        instances_per_series=(4, 10),
        instance_bytes=(40_000, 90_000),
    )


def _write_job(path: Path, catalog: Catalog) -> Path:
    collections = sorted({entry.collection for entry in catalog.series})
    listed = ", ".join(f'"{name}"' for name in collections)
    path.write_text(
        f"[download]\nconcurrency = 3\nstall_timeout_s = 5\n\n[[query]]\ncollection = [{listed}]\n",
        encoding="utf-8",
    )
    return path


def _phases_at_kill(out: Path, catalog: Catalog, planned: int) -> set[str]:
    """Which phases were under way when the process died, read from the frozen destination."""
    found: set[str] = set()
    staging = out / STATE_DIR_NAME / "staging"
    entries = list(staging.iterdir()) if staging.exists() else []
    for entry in entries:
        # Staging directories are named after their series UID, then owner and nonce.
        files = [p for p in entry.iterdir() if p.suffix == ".dcm"] if entry.is_dir() else []
        series = next((s for s in catalog.series if entry.name.startswith(s.uid)), None)
        if series is not None and len(files) >= series.instance_count:
            found.add("verifying")
        else:
            found.add("downloading")
    statuses = journal_statuses(out) if (out / STATE_DIR_NAME).exists() else {}
    if any(status == "verified" for status in statuses.values()):
        found.add("publishing")
    if _atomic_temporaries(out) or (
        planned
        and sum(1 for status in statuses.values() if status in ("done", "failed")) >= planned
        and not entries
    ):
        found.add("finishing")
    if not found:
        found.add("planning")
    return found


#: Half the kills land at a random time; the rest wait for a narrow window to open, polled
#: every millisecond: a staging directory holding every file (verification and fsync under
#: way), a ``verified`` journal record not yet followed by ``done`` (publishing), or an
#: atomic-write temporary (``.NAME.PID.HEX.tmp``: metadata.csv, reports) being written (finishing).
_TARGETS = ("random", "random", "random", "verifying", "publishing", "finishing")


def _wait_for_moment(
    proc: subprocess.Popen[bytes], out: Path, catalog: Catalog, target: str, delay_s: float, longest_s: float
) -> bool:
    """Wait until it is time to kill; True when the process ended by itself first."""
    if target == "random":
        try:
            proc.wait(timeout=delay_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + longest_s
    old_segments = _journal_segments(out)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        if target == "publishing" and _journal_has_verified(out, old_segments):
            return False
        if target == "verifying" and _staging_complete(out, catalog):
            return False
        if target == "finishing" and _atomic_temporaries(out):
            return False
        time.sleep(0.001)
    return proc.poll() is not None


def _journal_segments(out: Path) -> set[str]:
    try:
        return {path.name for path in (out / STATE_DIR_NAME / "journal").iterdir()}
    except OSError:
        return set()


def _journal_has_verified(out: Path, old_segments: set[str]) -> bool:
    """Whether this run's journal segment holds a ``verified`` record not yet followed by ``done``."""
    latest: dict[str, str] = {}
    for name in sorted(_journal_segments(out) - old_segments):
        try:
            lines = (out / STATE_DIR_NAME / "journal" / name).read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = SeriesRecord.from_json(line)
            except ValueError:
                continue  # a line being written right now
            latest[record.series_uid] = record.status
    return "verified" in latest.values()


def _atomic_temporaries(out: Path) -> list[Path]:
    """Atomic-write temporaries being written now (destination root, state dir, reports)."""
    found: list[Path] = []
    for place in (out, out / STATE_DIR_NAME, out / STATE_DIR_NAME / "reports"):
        try:
            found.extend(p for p in place.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))
        except OSError:
            continue
    return found


def _staging_complete(out: Path, catalog: Catalog) -> bool:
    staging = out / STATE_DIR_NAME / "staging"
    try:
        entries = list(staging.iterdir())
    except OSError:
        return False
    for entry in entries:
        series = next((s for s in catalog.series if entry.name.startswith(s.uid)), None)
        try:
            count = sum(1 for p in entry.iterdir() if p.suffix == ".dcm")
        except OSError:
            continue
        if series is not None and count >= series.instance_count:
            return True
    return False


def _reported(out: Path) -> list[str]:
    report = out / STATE_DIR_NAME / "last-report.json"
    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(item.get("series_uid")) for item in document.get("failures", []) if isinstance(item, dict)]


class _Launch(Protocol):
    def __call__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]: ...


@contextmanager
def _reaper() -> Iterator[_Launch]:
    """``start_cli`` that kills and reaps, on the way out, every child still running.

    A campaign interrupted by an exception (a timeout, Ctrl-C) must not leave a CLI running
    behind it, writing into a directory about to be removed.
    """
    started: list[subprocess.Popen[bytes]] = []

    def launch(
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        proc = start_cli(args, env=env, stdout=stdout, stderr=stderr)
        started.append(proc)
        return proc

    try:
        yield launch
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_crash_campaign(
    workdir: Path,
    *,
    kills: int,
    seed: int = 7,
    catalog: Catalog | None = None,
    bytes_per_s: float = 400_000,
    max_delay_s: float | None = None,
    progress: Callable[[str], None] | None = None,
    startup_points: Sequence[str] = (),
    startup_rounds: int = 1,
) -> CrashResult:
    """SIGKILL the CLI ``kills`` times over rounds of the same job; judge after every kill and round.

    Then ``startup_rounds`` passes over ``startup_points`` (names from
    :data:`~tcia_fetch._crashpoint.STARTUP_CRASH_POINTS`): one start-up round per point.
    """
    catalog = catalog or crash_catalog()
    rng = random.Random(seed)
    result = CrashResult(series_per_round=len(catalog.series))
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    job = _write_job(workdir / "job.toml", catalog)
    (workdir / "logs").mkdir(exist_ok=True)
    planned = [entry.uid for entry in catalog.series]
    fake = FakeNBIA(catalog, load=LoadModel(bytes_per_s_per_connection=bytes_per_s))
    with serve_in_thread(fake) as server, _reaper() as launch:
        base_url = server.base_url

        def args_for(out: Path) -> list[str]:
            return ["run", str(job), "--out", str(out), "--base-url", base_url, "--quiet"]

        round_index = 0
        clean_run_s = _clean_run_seconds(workdir / "reference", args_for, catalog, result, launch)
        longest = max_delay_s if max_delay_s is not None else max(1.0, clean_run_s * 1.1)
        while result.kills < kills:
            round_index += 1
            out = workdir / f"round-{round_index:04d}"
            earlier: dict[str, dict[str, FileStamp]] = {}
            first = True
            while True:
                if not first:
                    result.resumes += 1
                first = False
                log = workdir / "logs" / f"round-{round_index:04d}-{result.resumes:05d}.log"
                with log.open("wb") as sink:
                    proc = launch(args_for(out), stdout=sink, stderr=subprocess.STDOUT)
                target = rng.choice(_TARGETS)
                if not _wait_for_moment(proc, out, catalog, target, rng.uniform(0.0, longest), longest):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    result.kills += 1
                    for phase in _phases_at_kill(out, catalog, len(planned)):
                        result.phases[phase] += 1
                    loss = judge_destination(
                        out, catalog, planned=planned, reported=[], earlier=earlier, clean_finish=False
                    )
                    _note(result, loss, f"after kill {result.kills}")
                    _remember(out, earlier)
                    if result.kills >= kills:
                        break
                    continue
                result.exit_codes[proc.returncode] += 1
                if proc.returncode != 0:
                    tail = log.read_text(encoding="utf-8", errors="replace")[-600:]
                    result.problems.append(f"round {round_index}: a run exited {proc.returncode}: {tail}")
                loss = judge_destination(
                    out, catalog, planned=planned, reported=_reported(out), earlier=earlier
                )
                loss.outside.extend(outside_paths(workdir, out, _campaign_files(workdir)))
                _note(result, loss, f"after round {round_index}")
                result.rounds_completed += 1
                break
            if progress is not None:
                progress(f"crash: {result.kills}/{kills} kills, {result.rounds_completed} rounds completed")
        # The last round may have stopped on a kill: finish it, then judge it like any other round.
        last = workdir / f"round-{round_index:04d}"
        if result.rounds_completed < round_index:
            earlier_last: dict[str, dict[str, FileStamp]] = {}
            _remember(last, earlier_last)
            result.resumes += 1
            proc = launch(args_for(last))
            code = proc.wait(timeout=_RUN_TIMEOUT_S)
            result.exit_codes[code] += 1
            loss = judge_destination(
                last, catalog, planned=planned, reported=_reported(last), earlier=earlier_last
            )
            loss.outside.extend(outside_paths(workdir, last, _campaign_files(workdir)))
            _note(result, loss, "after the final resume")
            result.rounds_completed += 1
        for pass_index in range(startup_rounds):
            for point in startup_points:
                round_index += 1
                out = workdir / f"round-{round_index:04d}"
                _startup_round(out, point, args_for, catalog, planned, result, workdir, launch)
                if progress is not None:
                    progress(f"crash: start-up pass {pass_index + 1}/{startup_rounds}: killed at {point}")
    result.duration_s = time.monotonic() - started
    return result


def _startup_round(
    out: Path,
    point: str,
    args_for: Callable[[Path], list[str]],
    catalog: Catalog,
    planned: list[str],
    result: CrashResult,
    workdir: Path,
    launch: _Launch,
) -> None:
    """Kill after the first publish, restart and kill at ``point``, restart: it must finish."""
    where = f"start-up round at {point}"
    first = launch(args_for(out), env={CRASH_POINT_ENV: "publish.after_rename"})
    if first.wait(timeout=_RUN_TIMEOUT_S) != -signal.SIGKILL:
        result.problems.append(f"{where}: the first run did not die after its first publish")
    result.kills += 1
    result.phases["publishing"] += 1
    _note(result, judge_destination(out, catalog, planned=planned, reported=[], clean_finish=False), where)
    earlier: dict[str, dict[str, FileStamp]] = {}
    _remember(out, earlier)
    # From here on no pause: each run starts the instant the previous one is reaped.
    killed = launch(args_for(out), env={CRASH_POINT_ENV: point})
    code = killed.wait(timeout=_RUN_TIMEOUT_S)
    result.resumes += 1
    if code == -signal.SIGKILL:
        result.startup_kills[point] += 1
    else:
        result.problems.append(f"{where}: the run never reached the point (exit {code})")
    log = workdir / "logs" / f"{out.name}-startup.log"
    with log.open("wb") as sink:
        final = launch(args_for(out), stdout=sink, stderr=subprocess.STDOUT)
        code = final.wait(timeout=_RUN_TIMEOUT_S)
    result.resumes += 1
    result.exit_codes[code] += 1
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-600:]
        result.problems.append(f"{where}: the restart exited {code}: {tail}")
    loss = judge_destination(out, catalog, planned=planned, reported=_reported(out), earlier=earlier)
    loss.outside.extend(outside_paths(workdir, out, _campaign_files(workdir)))
    _note(result, loss, f"after the {where}")
    result.rounds_completed += 1


def _campaign_files(workdir: Path) -> list[Path]:
    return [workdir / "job.toml", workdir / "logs", *workdir.glob("round-*"), workdir / "reference"]


def _clean_run_seconds(
    out: Path, args_for: Callable[[Path], list[str]], catalog: Catalog, result: CrashResult, launch: _Launch
) -> float:
    """Time one uninterrupted run (the kill delays are spread over this length) and judge it."""
    started = time.monotonic()
    proc = launch(args_for(out))
    code = proc.wait(timeout=_RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    if code != 0:
        result.problems.append(f"the uninterrupted reference run exited {code}")
    loss = judge_destination(out, catalog, planned=[e.uid for e in catalog.series], reported=_reported(out))
    _note(result, loss, "reference run")
    return elapsed


def _remember(out: Path, earlier: dict[str, dict[str, FileStamp]]) -> None:
    for uid, directory in published_series(out).items():
        if uid not in earlier:
            earlier[uid] = series_stamps(directory)


def _note(result: CrashResult, loss: DataLoss, when: str) -> None:
    if loss.total:
        found = {name: getattr(loss, name)[:3] for name, count in loss.counts().items() if count}
        result.problems.append(f"{when}: {found}")
    result.loss.add(loss)
