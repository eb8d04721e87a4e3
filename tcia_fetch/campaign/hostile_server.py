"""The "hostile server" family: the real CLI against a fake NBIA server that means harm.

Each case starts the fake in one hostile mode (a query bomb, an md5-list bomb, an endpoint that
echoes credentials, a bad row among good ones, a reserved name, a broken redirect, a cross-origin
token redirect, a throttle storm, ...), runs ``python -m tcia_fetch`` as a child process, and judges
the end state a user cares about: peak memory, what was printed and stored, the exit code, and
what got done. A case is a plain function ``run(workdir) -> ServerCaseOutcome``; each family lives
in its own ``_hostile_<family>.py`` module exposing ``cases() -> list[ServerCase]`` and is named
in :data:`FAMILY_MODULES`, so families are added without touching each other.

:func:`run_cli_measured` is the one way a case runs the CLI: wall clock bounded, ``VmHWM`` polled
from ``/proc`` (``ru_maxrss`` would carry this process's own RSS across fork+exec).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcia_fetch.campaign.process import cli_command, peak_rss_kb

__all__ = [
    "FAMILY_MODULES",
    "CliRun",
    "HostileServerResult",
    "ServerCase",
    "ServerCaseOutcome",
    "all_cases",
    "run_cli_measured",
    "run_hostile_server",
]

#: Modules holding one family each (``cases()``); imported lazily by :func:`all_cases`.
FAMILY_MODULES: tuple[str, ...] = (
    "tcia_fetch.campaign._hostile_archive",  # issue 14 item 2: md5-list bomb, implausible claims, free space
    "tcia_fetch.campaign._hostile_rows",  # bad-rows, reserved-names, path-collisions (issue 14: 4, 5, 9)
    "tcia_fetch.campaign._hostile_bodies",  # issue 14 items 1, 6, 7: query-bomb, redirect
    "tcia_fetch.campaign._hostile_secrets",  # issue 14 items 3, 8, 9: echo, throttle-storm, control-chars
)


@dataclass
class ServerCaseOutcome:
    """How one hostile case ended; ``problems`` empty means the user was protected."""

    family: str
    name: str
    exit_code: int | None = None
    peak_rss_mb: float | None = None
    series_done: int | None = None
    series_failed: int | None = None
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "name": self.name,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "peak_rss_mb": self.peak_rss_mb,
            "series_done": self.series_done,
            "series_failed": self.series_failed,
            "duration_s": round(self.duration_s, 2),
            "problems": self.problems[:10],
        }


@dataclass(frozen=True)
class ServerCase:
    """One hostile mode and its judge; ``run`` gets an empty work directory of its own."""

    family: str
    name: str
    run: Callable[[Path], ServerCaseOutcome]
    #: Cases too heavy for CI's reduced campaign (e.g. a GiB-sized bomb) say so here.
    heavy: bool = False


@dataclass
class HostileServerResult:
    """Every case's outcome; the family passes when every case passed."""

    outcomes: list[ServerCaseOutcome] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def problems(self) -> list[str]:
        return [f"{o.family}/{o.name}: {p}" for o in self.outcomes for p in o.problems]

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.passed)

    def as_dict(self) -> dict[str, object]:
        families = Counter(o.family for o in self.outcomes)
        worst_rss = max((o.peak_rss_mb or 0.0 for o in self.outcomes), default=0.0)
        return {
            "cases": len(self.outcomes),
            "failed": self.failed,
            "families": dict(sorted(families.items())),
            "worst_peak_rss_mb": round(worst_rss, 1),
            "outcomes": [o.as_dict() for o in self.outcomes],
            "duration_s": round(self.duration_s, 1),
        }


@dataclass(frozen=True)
class CliRun:
    """What a measured CLI run did."""

    exit_code: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    wall_s: float
    timed_out: bool


def run_cli_measured(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 300.0,
) -> CliRun:
    """Run ``python -m tcia_fetch ARGS``; its exit code, output and peak RSS (``VmHWM``, MiB).

    A run past ``timeout_s`` is killed and reported with ``timed_out`` (exit code -9): a hang is
    a finding, not a reason for the campaign to hang too.
    """
    root = str(Path(__file__).resolve().parents[2])
    merged = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    merged["PYTHONPATH"] = os.pathsep.join(p for p in (root, merged.get("PYTHONPATH", "")) if p)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        argv = cli_command(*args)
        proc = subprocess.Popen(argv, env=merged, stdout=out, stderr=err, cwd=cwd)
        peak_kb = 0
        timed_out = False
        while True:
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, peak_rss_kb(proc.pid, argv))
            if time.monotonic() - started > timeout_s and not timed_out:
                timed_out = True
                proc.kill()
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return CliRun(
            exit_code=proc.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            peak_rss_mb=round(peak_kb / 1024, 1),
            wall_s=time.monotonic() - started,
            timed_out=timed_out,
        )


def all_cases(*, include_heavy: bool = True) -> list[ServerCase]:
    """Every registered case, family by family (heavy ones only when asked)."""
    cases: list[ServerCase] = []
    for module_name in FAMILY_MODULES:
        module = importlib.import_module(module_name)
        cases += [case for case in module.cases() if include_heavy or not case.heavy]
    return cases


def run_hostile_server(
    root: Path,
    *,
    include_heavy: bool = True,
    only: frozenset[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HostileServerResult:
    """Run every case (or the families in ``only``) in its own directory under ``root``."""
    say = progress or (lambda _message: None)
    result = HostileServerResult()
    started = time.monotonic()
    for index, case in enumerate(all_cases(include_heavy=include_heavy)):
        if only is not None and case.family not in only:
            continue
        place = root / f"{index:02d}-{case.family}-{case.name}"
        place.mkdir(parents=True, exist_ok=True)
        case_started = time.monotonic()
        try:
            outcome = case.run(place)
        except Exception as exc:  # a broken case is a failed case, not a crashed campaign
            outcome = ServerCaseOutcome(case.family, case.name, problems=[f"case raised {exc!r}"])
        outcome.duration_s = time.monotonic() - case_started
        result.outcomes.append(outcome)
        say(f"hostile-server: {case.family}/{case.name}: {'pass' if outcome.passed else 'FAIL'}")
    result.duration_s = time.monotonic() - started
    return result
