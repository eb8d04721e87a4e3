"""The CLI against query bombs and hostile redirects (issue 14 items 1, 6, 7), end to end.

Each family runs its CI cases (tcia_fetch/campaign/_hostile_bodies.py): the real CLI as a child
process against the fake server in one hostile mode, judged on peak RSS (< 200 MB), exit code,
what is printed, what got done, and what reached the other origin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.hostile_server import run_hostile_server


@pytest.mark.parametrize("family", ["query-bomb", "redirect"])
def test_hostile_bodies_family_protects_the_user(tmp_path: Path, family: str) -> None:
    result = run_hostile_server(tmp_path, include_heavy=False, only=frozenset({family}))
    assert len(result.outcomes) >= 2, "the family registered no cases"
    assert result.problems == []
    for outcome in result.outcomes:
        assert outcome.peak_rss_mb is not None and 0 < outcome.peak_rss_mb < 200
