"""Helpers for end-to-end tests: the fake server and the CLI as real subprocesses."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal, overload

STATE_DIR = ".tcia-fetch"


@contextmanager
def fake_server_process(tmp_path: Path, args: Sequence[str] = ()) -> Iterator[str]:
    """Run ``python -m tcia_fetch.testing serve`` on loopback; yield its API root URL (``https``
    when ``args`` name a certificate)."""
    port_file = tmp_path / "port"
    log_path = tmp_path / "fake-server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tcia_fetch.testing",
            "serve",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"fake server exited: {log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise TimeoutError("fake server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        scheme = "https" if any(arg.startswith("--tls-cert") for arg in args) else "http"
        yield f"{scheme}://127.0.0.1:{port}/nbia-api/services/v4/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


#: Where a child's stdout/stderr go (as :class:`subprocess.Popen` takes them).
_Stream = int | IO[Any] | None


@overload
def cli(
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    cwd: Path | None = None,
    text: Literal[True],
) -> subprocess.Popen[str]: ...


@overload
def cli(
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    cwd: Path | None = None,
    text: Literal[False] = False,
) -> subprocess.Popen[bytes]: ...


def cli(
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    cwd: Path | None = None,
    text: bool = False,
) -> subprocess.Popen[str] | subprocess.Popen[bytes]:
    """Start ``python -m tcia_fetch ARGS`` (the same entry point as the console script).

    With ``text=True`` its pipes carry ``str`` (a ``Popen[str]``), else ``bytes``.
    """
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tcia_fetch", *args]
    if text:
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, cwd=cwd, text=True)
    return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, cwd=cwd)


def tree_fingerprint(out: Path) -> dict[str, str]:
    """Relative path → MD5 of every published file (state dir and metadata.csv timestamps aside)."""
    result: dict[str, str] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if rel.parts[0] == STATE_DIR or not path.is_file():
            continue
        data = path.read_bytes()
        if rel.as_posix() == "metadata.csv":
            data = _stable_metadata_csv(path)
        elif rel.as_posix() in ("catalog.parquet", "instances.parquet"):
            data = _stable_parquet(path)
        result[rel.as_posix()] = hashlib.md5(data).hexdigest()
    return result


def _stable_metadata_csv(path: Path) -> bytes:
    """metadata.csv without the columns that differ between two destinations by design."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    varying = {"Download Timestamp", "Absolute Location"}
    stable = [{k: v for k, v in row.items() if k not in varying} for row in rows]
    # Row order follows the journal (streamed, issue 13): a repaired series' row moves to the end.
    stable.sort(key=lambda row: row.get("File Location", ""))
    return json.dumps(stable, sort_keys=True).encode()


def _stable_parquet(path: Path) -> bytes:
    """A Parquet catalog's rows without the download time (which differs between runs by design)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    stable = [{k: v for k, v in row.items() if k != "tcia_downloaded_at"} for row in rows]
    # Rows follow the journal (streamed, issue 13), whose order depends on when each series finished.
    stable.sort(key=lambda row: json.dumps(row, sort_keys=True, default=str))
    return json.dumps(stable, sort_keys=True, default=str).encode()


def leftovers(out: Path) -> list[Path]:
    """Temporary or partial files left anywhere under ``out`` after a clean finish."""
    found = [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp")) or ".incomplete" in p.name]
    staging = out / STATE_DIR / "staging"
    if staging.exists():
        found += list(staging.iterdir())
    trash = out / STATE_DIR / "trash"
    if trash.exists():
        found += list(trash.iterdir())
    return found
