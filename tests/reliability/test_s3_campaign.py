"""The S3 part of the reliability campaign in its reduced CI form: data lost must be 0.

``TCIA_FETCH_S3_CAMPAIGN_KILLS`` sizes it (2 here; the release campaign runs 30 with
``python -m tcia_fetch.campaign --full``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcia_fetch.campaign.s3 import run_s3_campaign

pytestmark = pytest.mark.slow


def test_s3_destination_survives_store_faults_and_sigkills(tmp_path: Path) -> None:
    kills = int(os.environ.get("TCIA_FETCH_S3_CAMPAIGN_KILLS", "2"))
    result = run_s3_campaign(tmp_path, kills=kills, seed=int(os.environ.get("TCIA_FETCH_KILL_SEED", "7")))
    assert result.problems == []
    assert set(result.data_lost().values()) == {0}, result.data_lost()
    assert result.faults_injected >= 3, "the fault proxy injected too little to mean anything"
    assert result.series > 0
    # The checks had something to check: a kill cut an upload open (the rerun had to abort it), and
    # reruns started with committed series (which they must not fetch again).
    assert result.mid_upload_kills >= 1 and result.uploads_cut_by_kills >= 1, result.as_dict()
    assert result.committed_at_rerun > 0
