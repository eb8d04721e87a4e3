"""Hostile archives through the campaign runner (the corpus and judge of tests/series are reused).

CI tries ``TCIA_FETCH_CAMPAIGN_HOSTILE`` archives (default 120, every family); the release
campaign tries 1000.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.hostile import run_hostile

from .conftest import env_int

pytestmark = pytest.mark.slow


def test_hostile_corpus_zero_accepted_zero_escapes(tmp_path: Path) -> None:
    count = env_int("TCIA_FETCH_CAMPAIGN_HOSTILE", 120)
    result = run_hostile(count, tmp_path, seed=env_int("TCIA_FETCH_CAMPAIGN_SEED", 3))
    assert result.tried == count
    assert result.rejected == count
    assert (result.accepted, result.escapes, result.too_slow, result.too_much_memory, result.wrong_error) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert len(result.families) >= 10
    assert result.problems == []
