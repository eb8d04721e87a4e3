"""SIGKILL the real CLI at random moments and at narrow windows; every invariant holds after each kill.

CI runs ``TCIA_FETCH_CAMPAIGN_KILLS`` kills (default 6); the release campaign runs 200 or more
(``python -m tcia_fetch.campaign --full``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.crash import PHASES, run_crash_campaign

from .conftest import env_int

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_kills_resumes_and_rounds_lose_nothing(tmp_path: Path) -> None:
    kills = env_int("TCIA_FETCH_CAMPAIGN_KILLS", 6)
    result = run_crash_campaign(tmp_path, kills=kills, seed=env_int("TCIA_FETCH_CAMPAIGN_SEED", 3))
    assert result.kills == kills
    assert result.resumes >= kills
    assert result.rounds_completed >= 1
    assert result.problems == []
    assert result.loss.counts() == dict.fromkeys(result.loss.counts(), 0)
    assert set(result.phases) <= set(PHASES)
    assert sum(result.phases.values()) >= kills
    assert set(result.exit_codes) == {0}
