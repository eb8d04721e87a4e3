"""The hostile-server family "archive" (issue 14 item 2), run with the real CLI.

md5-list bomb, implausible claims and a claim beyond the free space: every case must end with the
bad series reported with its reason, every other series done, nothing of the bad series in the
destination and the CLI's peak RSS under 200 MB (campaign/_hostile_archive.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tcia_fetch.campaign._hostile_archive import FAMILY, PEAK_RSS_LIMIT_MB
from tcia_fetch.campaign.hostile_server import run_hostile_server
from tcia_fetch.series.plausible import MAX_PLAUSIBLE_BYTES

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)  # three CLI runs; about 60 s on a loaded 2-core machine
def test_archive_family_protects_the_user(tmp_path: Path) -> None:
    result = run_hostile_server(tmp_path, only=frozenset({FAMILY}))
    summary = json.dumps(result.as_dict(), indent=1)
    assert result.failed == 0, summary
    codes = {o.name: o.exit_code for o in result.outcomes}
    # A claim beyond the free space ends the run as a full disk does, after the rest of the job
    # (on a filesystem with over 4 TiB free the claim is refused as implausible instead: exit 1).
    unfit = shutil.disk_usage(tmp_path).free + (1 << 30) < MAX_PLAUSIBLE_BYTES
    assert codes == {"md5-bomb": 1, "implausible-claims": 1, "free-space": 3 if unfit else 1}, summary
    for outcome in result.outcomes:
        assert outcome.peak_rss_mb is not None and 0 < outcome.peak_rss_mb < PEAK_RSS_LIMIT_MB, summary
        assert outcome.series_done is not None and outcome.series_done >= 2, summary
