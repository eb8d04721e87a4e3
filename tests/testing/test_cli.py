"""``python -m tcia_fetch.testing serve`` as a subprocess: port file, answers, clean stop, stats file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import tcia_fetch.testing
from tcia_fetch.testing import FaultKind
from tcia_fetch.testing.__main__ import manifest_series_uids, parse_faults

_REPO_ROOT = Path(tcia_fetch.testing.__file__).resolve().parents[2]
_MANIFESTS = _REPO_ROOT / "tests" / "job" / "manifests"


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode() if process.stderr else "server exited")
        time.sleep(0.05)
    raise AssertionError("port file never appeared")


def test_serve_writes_port_file_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    manifest = tmp_path / "m.tcia"
    manifest.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n1.2.3.4\n1.2.3.5\n")
    port_file = tmp_path / "port"
    stats_file = tmp_path / "stats.json"
    env = {**os.environ, "PYTHONPATH": str(_REPO_ROOT)}
    command = [
        sys.executable, "-m", "tcia_fetch.testing", "serve", "--port", "0", "--port-file", str(port_file),
        "--stats-file", str(stats_file), "--seed", "3", "--manifest", str(manifest),
        "--fault", "SERVER_ERROR:1.2.3.4", "--max-concurrent-downloads", "4",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(_wait_for(port_file, process))
        base = f"http://127.0.0.1:{port}/nbia-api/services/v4/"
        with urllib.request.urlopen(base + "getSeriesSize?SeriesInstanceUID=1.2.3.5", timeout=10) as response:
            assert json.loads(response.read())[0]["ObjectCount"] >= 1
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(base + "getImage?SeriesInstanceUID=1.2.3.4", timeout=10)
        assert failure.value.code == 500
        failure.value.close()
        with urllib.request.urlopen(base + "getImage?SeriesInstanceUID=1.2.3.4", timeout=10) as response:
            assert response.read()[:2] == b"PK"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    stats = json.loads(stats_file.read_text())
    assert stats["downloads_completed"] == 1 and stats["faults_fired"] == {"SERVER_ERROR": 1}
    assert b"listening" in stderr


def test_manifest_parser_reads_real_manifests() -> None:
    small = manifest_series_uids((_MANIFESTS / "small_manifest.tcia").read_text())
    assert len(small) == 5 and small[0] == "1.2.246.352.71.2.494841863751.4253616.20190218155318"
    odd = manifest_series_uids(
        (_MANIFESTS / "NBIA-Submission-Test-Data_225series_3.4gbytes.tcia").read_text()
    )
    assert len(odd) == 225 and "Series ID" not in odd


def test_fault_option_syntax() -> None:
    plan = parse_faults(["CUT:1.2.3,after_bytes=10,times=2", "rate_limit", "SHORT_ZIP:random=0.25"], seed=1)
    assert [(rule.kind, rule.series_uid, rule.times) for rule in plan.rules] == [
        (FaultKind.CUT, "1.2.3", 2),
        (FaultKind.RATE_LIMIT, None, 1),
    ]
    assert plan.rules[0].params["after_bytes"] == 10
    assert (plan.random_rate, plan.random_kinds) == (0.25, (FaultKind.SHORT_ZIP,))
    with pytest.raises(SystemExit):
        parse_faults(["NOPE"], seed=0)
