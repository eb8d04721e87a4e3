"""The hostile-server families of issue 14 items 4, 5 and 9: the real CLI, run and rerun.

Bad rows among good ones, collections named like tcia-fetch's own files and colliding descriptive
paths: every good series published and verified, every bad one a failed series with its reason,
exit codes as for failed series, reruns stable and idle (tcia_fetch/campaign/_hostile_rows.py).
CI runs the light case (bad rows); ``TCIA_FETCH_HOSTILE_HEAVY=1`` adds the CLI versions of the
reserved-name and path-collision cases, whose end states tests/engine/test_run_names.py
checks in process on every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcia_fetch.campaign.hostile_server import all_cases, run_hostile_server

FAMILIES = frozenset({"bad-rows", "reserved-names", "path-collisions"})


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_bad_rows_reserved_names_and_path_collisions_end_well(tmp_path: Path) -> None:
    heavy = os.environ.get("TCIA_FETCH_HOSTILE_HEAVY") == "1"
    result = run_hostile_server(tmp_path, only=FAMILIES, include_heavy=heavy)
    expected = [case for case in all_cases(include_heavy=heavy) if case.family in FAMILIES]
    assert [(o.family, o.name) for o in result.outcomes] == [(c.family, c.name) for c in expected]
    assert "bad-rows" in {outcome.family for outcome in result.outcomes}
    assert result.problems == []
