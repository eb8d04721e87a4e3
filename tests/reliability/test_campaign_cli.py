"""``python -m tcia_fetch.campaign`` runs, prints its figures, writes JSON, and fails on data loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcia_fetch.campaign.crash import CrashResult
from tcia_fetch.campaign.oracle import DataLoss
from tcia_fetch.campaign.report import CampaignFigures

pytestmark = pytest.mark.slow


def test_reduced_campaign_prints_figures_and_passes(tmp_path: Path) -> None:
    report = tmp_path / "campaign.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcia_fetch.campaign",
            "--kills",
            "0",
            "--hostile",
            "10",
            "--fuzz-examples",
            "40",  # the fuzz part's own reduced test: tests/reliability/test_fuzz_parsers.py
            "--skip",
            "faults",
            "--skip",
            "local",
            "--skip",
            "s3",  # its own reduced test: tests/reliability/test_s3_campaign.py
            "--skip",
            "scaleout",  # its own reduced test: tests/reliability/test_scaleout_campaign.py
            "--skip",
            "server",  # each hostile-server family has its own test: tests/reliability/test_hostile_*.py
            "--skip",
            "secrets",  # its own test: tests/reliability/test_secrets.py
            "--json",
            str(report),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data lost" in done.stdout and "PASSED" in done.stdout
    document = json.loads(report.read_text())
    assert document["passed"] is True
    assert set(document["data_lost"].values()) == {0}
    assert document["hostile"]["tried"] == 10
    assert document["fuzz"] is not None and document["secrets"] is None  # run and skipped parts


def test_any_data_loss_fails_the_campaign() -> None:
    clean = CampaignFigures(mode="reduced", started_at="now")
    figures = CampaignFigures(mode="reduced", started_at="now")
    figures.crash = CrashResult(loss=DataLoss(leftovers=["out/.tcia-fetch/staging/x"]))
    assert clean.passed
    assert not figures.passed
    assert figures.data_lost()["leftovers"] == 1
    assert any("leftovers" in line for line in figures.summary_lines())


def test_usage_error_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tcia_fetch.campaign", "--kills", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
