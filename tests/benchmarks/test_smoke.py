"""CI smoke of the benchmark harness: the ``smoke`` scenario end to end, tcia-fetch and curl only.

No timing assertions (timings are benchmarks, not tests). What must hold: the harness starts the fake
server, runs both contenders, checks their output against the catalog and writes a results document
in which every series downloaded by tcia-fetch is complete and byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("unzip") is None, reason="needs curl and unzip"
)
@pytest.mark.timeout(300)  # a hang guard, not a timing: 33 s seen on a loaded 2-core machine
def test_smoke_scenario_writes_a_complete_results_document(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "smoke",
            "--contenders",
            "tcia-fetch,curl",
            "--out-dir",
            str(tmp_path / "results"),
            "--temp-dir",
            str(tmp_path),
            "--no-plot",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    document = json.loads((tmp_path / "results" / "smoke-latest.json").read_text(encoding="utf-8"))
    assert document["scenario"] == "smoke"
    assert set(document["medians"]) == {"tcia-fetch", "curl"}
    ours = document["medians"]["tcia-fetch"]
    worst = ours["worst_run"]
    assert worst["series_expected"] == document["series"] > 0
    assert worst["series_complete"] == worst["series_expected"], worst
    assert worst["corrupt_files"] == 0 and worst["misplaced_files"] == 0
    assert ours["all_runs_complete"] is True
    # The harness checked real bytes: the verified total is the catalog's DICOM total.
    assert worst["verified_bytes"] == document["dicom_bytes"]
    # Downloads went through the fake server and left nothing behind in the temporary directory.
    run = next(row for row in document["runs"] if row["contender"] == "tcia-fetch")
    assert run["server"]["downloads_completed"] >= document["series"]
    assert [path.name for path in tmp_path.iterdir()] == ["results"]

    markdown = (tmp_path / "results" / "latest.md").read_text(encoding="utf-8")
    assert "## smoke" in markdown and "`tcia-fetch`" in markdown
