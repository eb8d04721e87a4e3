"""The hostile-server family "secrets": echoed credentials, a throttle storm, terminal and CSV text."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.hostile_server import run_hostile_server

pytestmark = pytest.mark.e2e


def test_every_secrets_case_protects_the_user(tmp_path: Path) -> None:
    result = run_hostile_server(tmp_path, include_heavy=False, only=frozenset({"secrets"}))
    names = {outcome.name for outcome in result.outcomes}
    assert names == {"echo", "throttle-storm", "control-chars"}  # the heavy ones run in the full campaign
    assert result.problems == []
    storms = [o for o in result.outcomes if o.name.startswith("throttle-storm")]
    assert all(o.exit_code == 3 for o in storms)
