"""The hostile-server families of issue 14 items 4, 5 and 9: the real CLI, run and rerun.

Bad rows among good ones, collections named like tcia-fetch's own files and colliding descriptive
paths: every good series published and verified, every bad one a failed series with its reason,
exit codes as for failed series, reruns stable and idle (tcia_fetch/campaign/_hostile_rows.py).
"""

from __future__ import annotations

from pathlib import Path

from tcia_fetch.campaign.hostile_server import run_hostile_server

FAMILIES = frozenset({"bad-rows", "reserved-names", "path-collisions"})


def test_bad_rows_reserved_names_and_path_collisions_end_well(tmp_path: Path) -> None:
    result = run_hostile_server(tmp_path, only=FAMILIES)
    assert {outcome.family for outcome in result.outcomes} == FAMILIES
    assert len(result.outcomes) == 4
    assert result.problems == []
