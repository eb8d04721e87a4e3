"""Local faults: a destination that fills up (ENOSPC), one that is read-only, one shared by two runs.

Disk full and read-only need a real filesystem that says so: a small ``tmpfs`` mounted on the
destination (root only; :func:`mount_support` says whether this machine allows it, and why
not). The CLI runs as a child process against the fake server, exactly as a user runs it.

Promises checked (reliability.md D3, D5, F1):

* **disk full**: the run stops with a fatal exit and a message naming the cause; no series is
  half-published (every final directory is byte-exact); the journal still opens; after space
  is freed (the tmpfs is grown in place) a rerun finishes the job with nothing lost.
* **read-only**: a fatal exit naming the destination before any download request; after the
  mount is made writable a rerun finishes the job.
* **shared destination**: two runs started together on one destination end with every series
  verified once (the loser either waits, helps or says the destination is busy), nothing
  corrupt, nothing left over.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tcia_fetch.campaign.oracle import (
    STATE_DIR_NAME,
    DataLoss,
    judge_destination,
    leftover_paths,
    published_series,
)
from tcia_fetch.campaign.process import serve_in_thread, start_cli
from tcia_fetch.store.journal import Journal
from tcia_fetch.testing import Catalog, FakeNBIA

__all__ = [
    "LocalOutcome",
    "local_catalog",
    "mount_support",
    "run_disk_full",
    "run_read_only",
    "run_shared_destination",
]

_RUN_TIMEOUT_S = 180.0
_MOUNT_TIMEOUT_S = 20.0


@dataclass
class LocalOutcome:
    """One local-fault scenario: what happened and what went wrong (empty = passed)."""

    name: str
    exit_codes: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    loss: DataLoss = field(default_factory=DataLoss)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        """True when nothing went wrong (a skipped scenario did not pass)."""
        return self.skipped is None and not self.problems and self.loss.total == 0


def local_catalog(seed: int = 23) -> Catalog:
    """Eight series of about 150-400 kB each (about 2 MB in all)."""
    return Catalog.generate(
        seed=seed,
        collections=1,
        patients_per_collection=2,
        series_per_study=4,
        instances_per_series=(3, 6),
        instance_bytes=(40_000, 70_000),
    )


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=_MOUNT_TIMEOUT_S, check=False)


def mount_support() -> str | None:
    """None when a tmpfs can be mounted, remounted read-only and grown here; else the reason why not."""
    if os.geteuid() != 0:
        return "not root: mounting a small tmpfs needs root"
    probe = Path(tempfile.mkdtemp(prefix="tcia-fetch-mount-probe-"))
    try:
        mounted = _run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)])
        if mounted.returncode != 0:
            return f"mount -t tmpfs is not permitted: {mounted.stderr.decode(errors='replace').strip()}"
        grown = _run(["mount", "-o", "remount,size=2m", str(probe)])
        readonly = _run(["mount", "-o", "remount,ro", str(probe)])
        _run(["umount", str(probe)])
        if grown.returncode != 0 or readonly.returncode != 0:
            return "tmpfs remount (size or ro) is not permitted"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount is unavailable: {exc}"
    finally:
        probe.rmdir()


def _job(path: Path, catalog: Catalog) -> Path:
    listed = ", ".join(f'"{entry.uid}"' for entry in catalog.series)
    path.write_text(f"[download]\nconcurrency = 2\n[series]\nuids = [{listed}]\n", encoding="utf-8")
    return path


def _cli(job: Path, out: Path, base_url: str) -> tuple[int, str]:
    proc = start_cli(
        ["run", str(job), "--out", str(out), "--base-url", base_url, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = proc.communicate(timeout=_RUN_TIMEOUT_S)
    return proc.returncode, (stdout + stderr).decode("utf-8", errors="replace")


def _journal_opens(out: Path) -> str | None:
    try:
        journal = Journal.open(out / STATE_DIR_NAME, run_id="campaign-check")
        journal.close()
    except Exception as exc:  # any failure to read it back is the finding
        return f"the journal no longer opens: {exc}"
    return None


def _mount(out: Path, options: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    done = _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(out)])
    if done.returncode != 0:
        raise RuntimeError(f"mount failed: {done.stderr.decode(errors='replace')}")


def _remount(out: Path, options: str) -> None:
    done = _run(["mount", "-o", f"remount,{options}", str(out)])
    if done.returncode != 0:
        raise RuntimeError(f"remount failed: {done.stderr.decode(errors='replace')}")


def _unmount(out: Path) -> None:
    _run(["umount", "-l", str(out)])


def run_disk_full(workdir: Path, catalog: Catalog | None = None, *, size_kib: int = 700) -> LocalOutcome:
    """ENOSPC mid-run on a ``size_kib`` tmpfs; then grow it and rerun."""
    outcome = LocalOutcome("destination full (ENOSPC), then space freed")
    reason = mount_support()
    if reason is not None:
        outcome.skipped = reason
        return outcome
    catalog = catalog or local_catalog()
    uids = [entry.uid for entry in catalog.series]
    job = _job(workdir / "job.toml", catalog)
    out = workdir / "full"
    with serve_in_thread(FakeNBIA(catalog)) as server:
        _mount(out, f"size={size_kib}k")
        try:
            code, text = _cli(job, out, server.base_url)
            outcome.exit_codes.append(code)
            outcome.messages.append(text.strip()[-400:])
            if code == 0:
                outcome.problems.append("the run succeeded on a destination too small for the job")
            elif code not in (1, 3):
                outcome.problems.append(f"exit code {code}; expected the fatal code 3")
            if "space" not in text.lower() and "enospc" not in text.lower():
                outcome.problems.append(f"no clear 'no space' message: {text.strip()[-300:]!r}")
            half = judge_destination(out, catalog, planned=uids, reported=[], clean_finish=False)
            half.leftovers.extend(leftover_paths(out))  # a fatal exit is still a clean exit (I5)
            outcome.loss.add(half)
            problem = _journal_opens(out)
            if problem:
                outcome.problems.append(problem)
            _remount(out, "size=64m")
            code, text = _cli(job, out, server.base_url)
            outcome.exit_codes.append(code)
            if code != 0:
                outcome.problems.append(
                    f"the rerun after freeing space exited {code}: {text.strip()[-300:]!r}"
                )
            outcome.loss.add(judge_destination(out, catalog, planned=uids, reported=[]))
            missing = sorted(set(uids) - set(published_series(out)))
            if missing:
                outcome.problems.append(f"not published after the rerun: {missing}")
        finally:
            _unmount(out)
    return outcome


def run_read_only(workdir: Path, catalog: Catalog | None = None) -> LocalOutcome:
    """A read-only destination: fatal before any download; writable again: the rerun finishes."""
    outcome = LocalOutcome("read-only destination, then writable")
    reason = mount_support()
    if reason is not None:
        outcome.skipped = reason
        return outcome
    catalog = catalog or local_catalog()
    uids = [entry.uid for entry in catalog.series]
    job = _job(workdir / "job.toml", catalog)
    out = workdir / "readonly"
    fake = FakeNBIA(catalog)
    with serve_in_thread(fake) as server:
        _mount(out, "size=64m,ro")
        try:
            code, text = _cli(job, out, server.base_url)
            outcome.exit_codes.append(code)
            outcome.messages.append(text.strip()[-400:])
            downloads = [r for r in fake.request_log if r.endpoint.startswith("getImage")]
            if code not in (3,):
                outcome.problems.append(f"exit code {code} on a read-only destination; expected 3")
            if downloads:
                outcome.problems.append(
                    f"{len(downloads)} download request(s) before noticing the read-only disk"
                )
            if (
                "read-only" not in text.lower()
                and "not writable" not in text.lower()
                and "erofs" not in text.lower()
            ):
                outcome.problems.append(f"no clear read-only message: {text.strip()[-300:]!r}")
            _remount(out, "rw")
            code, text = _cli(job, out, server.base_url)
            outcome.exit_codes.append(code)
            if code != 0:
                outcome.problems.append(
                    f"the rerun on a writable destination exited {code}: {text.strip()[-300:]!r}"
                )
            outcome.loss.add(judge_destination(out, catalog, planned=uids, reported=[]))
        finally:
            _unmount(out)
    return outcome


def run_shared_destination(workdir: Path, catalog: Catalog | None = None) -> LocalOutcome:
    """Two runs started at once on one destination; then one more run must find nothing to do."""
    outcome = LocalOutcome("destination shared by two concurrent runs")
    catalog = catalog or local_catalog()
    uids = [entry.uid for entry in catalog.series]
    job = _job(workdir / "job.toml", catalog)
    out = workdir / "shared"
    fake = FakeNBIA(catalog)
    with serve_in_thread(fake) as server:
        args = ["run", str(job), "--out", str(out), "--base-url", server.base_url, "--quiet"]
        first = start_cli(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        second = start_cli(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        texts = []
        for proc in (first, second):
            stdout, stderr = proc.communicate(timeout=_RUN_TIMEOUT_S)
            outcome.exit_codes.append(proc.returncode)
            texts.append((stdout + stderr).decode("utf-8", errors="replace"))
        outcome.messages.extend(text.strip()[-300:] for text in texts)
        if 0 not in outcome.exit_codes:
            outcome.problems.append(f"neither run finished the job: exit codes {outcome.exit_codes}")
        for code, text in zip(outcome.exit_codes, texts, strict=True):
            if code not in (0, 3):
                outcome.problems.append(f"a run exited {code}: {text.strip()[-300:]!r}")
            if (
                code == 3
                and "busy" not in text.lower()
                and "lock" not in text.lower()
                and "another" not in text.lower()
            ):
                outcome.problems.append(
                    f"the losing run does not say the destination is in use: {text.strip()[-300:]!r}"
                )
        outcome.loss.add(judge_destination(out, catalog, planned=uids, reported=[]))
        per_series = {
            uid: sum(
                1
                for r in fake.request_log
                if r.endpoint.startswith("getImage")
                and r.query.get("SeriesInstanceUID") == uid
                and r.status == 200
            )
            for uid in uids
        }
        twice = sorted(uid for uid, count in per_series.items() if count > 1)
        if twice:
            outcome.messages.append(f"downloaded twice (wasted, not wrong): {len(twice)} series")
        code, text = _cli(job, out, server.base_url)
        outcome.exit_codes.append(code)
        if code != 0:
            outcome.problems.append(f"a third run after both exited {code}: {text.strip()[-300:]!r}")
        outcome.loss.add(judge_destination(out, catalog, planned=uids, reported=[]))
    return outcome
