"""Canary credentials and issued tokens never appear in anything the program writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.canary import run_secret_sweep

pytestmark = pytest.mark.e2e


def test_no_canary_anywhere(tmp_path: Path) -> None:
    result = run_secret_sweep(tmp_path)
    assert result.problems == []
    assert result.leaks == []
    assert result.tokens_issued >= 2  # the first token and the one refreshed mid-run
    assert result.places_searched >= 10
    assert result.exit_codes[0] == 1 and result.exit_codes[1] != 0
    assert result.exit_codes[2] == 1  # the echoing server: one query refused with the headers echoed
