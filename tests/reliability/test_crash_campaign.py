"""SIGKILL the real CLI at random moments and at narrow windows; every invariant holds after each kill.

CI runs ``TCIA_FETCH_CAMPAIGN_KILLS`` kills (default 4) and start-up rounds at
``TCIA_FETCH_CAMPAIGN_STARTUP_POINTS`` named start-up points (default 1, drawn with the seed; the
e2e tests in ``tests/e2e/test_startup_crash.py`` kill at every one); the release campaign runs 200
or more kills and three passes over every start-up point (``python -m tcia_fetch.campaign --full``).
A campaign's length depends on the machine's load (each kill restarts a real interpreter), so
each test sets its own timeout well above its length on a loaded 2-core machine.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tcia_fetch._crashpoint import STARTUP_CRASH_POINTS
from tcia_fetch.campaign.crash import PHASES, run_crash_campaign

from .conftest import env_int

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.mark.timeout(900)
def test_kills_resumes_and_rounds_lose_nothing(tmp_path: Path) -> None:
    kills = env_int("TCIA_FETCH_CAMPAIGN_KILLS", 4)
    result = run_crash_campaign(tmp_path, kills=kills, seed=env_int("TCIA_FETCH_CAMPAIGN_SEED", 3))
    assert result.kills == kills
    assert result.resumes >= kills
    assert result.rounds_completed >= 1
    assert result.problems == []
    assert result.loss.counts() == dict.fromkeys(result.loss.counts(), 0)
    assert set(result.phases) <= set(PHASES)
    assert sum(result.phases.values()) >= kills
    assert set(result.exit_codes) == {0}


@pytest.mark.timeout(900)
def test_kills_at_startup_points_with_immediate_restarts_lose_nothing(tmp_path: Path) -> None:
    seed = env_int("TCIA_FETCH_CAMPAIGN_SEED", 3)
    count = min(env_int("TCIA_FETCH_CAMPAIGN_STARTUP_POINTS", 1), len(STARTUP_CRASH_POINTS))
    points = random.Random(seed).sample(STARTUP_CRASH_POINTS, count)
    result = run_crash_campaign(tmp_path, kills=0, seed=seed, startup_points=points)
    assert result.problems == []
    assert result.loss.counts() == dict.fromkeys(result.loss.counts(), 0)
    assert dict(result.startup_kills) == dict.fromkeys(points, 1)  # each point reached, once
    assert result.rounds_completed == len(points)
    assert set(result.exit_codes) == {0}
