"""Property-based fuzzing of the job, manifest, CSV, API-body, md5-list and Retry-After parsers.

CI fuzzes ``TCIA_FETCH_CAMPAIGN_FUZZ`` inputs (default 3000); the release campaign 100,000.
"""

from __future__ import annotations

import pytest

from tcia_fetch.campaign.fuzz import TARGETS, run_fuzz
from tcia_fetch.errors import InputError
from tcia_fetch.job.manifest import parse_manifest

from .conftest import env_int


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang guard sized for the work: 100 s seen on a loaded 2-core machine
def test_no_crash_no_hang_no_invalid_uid_accepted() -> None:
    examples = env_int("TCIA_FETCH_CAMPAIGN_FUZZ", 3000)
    result = run_fuzz(examples)
    assert set(result.targets) == set(TARGETS)
    assert result.examples >= examples * 0.9
    for name, figures in result.targets.items():
        assert figures.violations == [], name
        assert figures.crashes == figures.hangs == figures.invalid_uids_accepted == 0
    job_rejections = [
        result.targets[name] for name in ("manifest (.tcia)", "uid table (CSV/TSV)", "job file (TOML)")
    ]
    assert all(figures.rejected > 0 and figures.accepted > 0 for figures in job_rejections)


def test_a_rejection_names_the_source_and_the_line() -> None:
    text = "downloadServerUrl=https://x\nListOfSeriesToDownload=\n1.2.3\n1.2.03\n"
    with pytest.raises(InputError) as caught:
        parse_manifest(text, source="fuzz-input")
    assert caught.value.source == "fuzz-input"
    assert "4" in str(caught.value)
