"""The scale-out part of the campaign: shards killed and rerun, a Dask worker killed mid-series.

CI runs ``TCIA_FETCH_CAMPAIGN_SHARDS`` shards (default 3) with ``TCIA_FETCH_CAMPAIGN_SHARD_KILLS``
kills (default 1), on a directory and on a bucket (moto on loopback), and one Dask worker kill,
on a directory and on a bucket; the release campaign runs more (``--full``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tcia_fetch.campaign.local import LocalOutcome
from tcia_fetch.campaign.s3shards import run_bucket_dask_worker_kill, run_bucket_shard_kills
from tcia_fetch.campaign.scaleout import run_dask_worker_kill, run_shard_kills

from .conftest import env_int

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _sizes() -> dict[str, int]:
    return {
        "shards": env_int("TCIA_FETCH_CAMPAIGN_SHARDS", 3),
        "kills": env_int("TCIA_FETCH_CAMPAIGN_SHARD_KILLS", 1),
        "seed": env_int("TCIA_FETCH_CAMPAIGN_SEED", 3),
    }


def _assert_nothing_lost(outcome: LocalOutcome) -> None:
    assert outcome.problems == []
    assert outcome.loss.counts() == dict.fromkeys(outcome.loss.counts(), 0)
    assert set(outcome.exit_codes) == {0}
    assert outcome.passed


@pytest.mark.parametrize("run_kills", [run_shard_kills, run_bucket_shard_kills], ids=["directory", "bucket"])
def test_shards_on_one_destination_survive_a_killed_shard(
    tmp_path: Path, run_kills: Callable[..., LocalOutcome]
) -> None:
    sizes = _sizes()
    outcome = run_kills(tmp_path, **sizes)
    _assert_nothing_lost(outcome)
    # Every kill landed on a shard still at work (one round, and one fresh destination, each).
    kills = [message for message in outcome.messages if message.startswith("killed shard")]
    assert len(kills) == sizes["kills"], outcome.messages


def test_a_dask_worker_killed_mid_series_costs_nothing(tmp_path: Path) -> None:
    outcome = run_dask_worker_kill(tmp_path, workers=2, concurrency=2)
    _assert_nothing_lost(outcome)
    assert outcome.exit_codes == [0]
    assert any(message.startswith("killed worker") for message in outcome.messages), outcome.messages


def test_a_dask_worker_killed_mid_series_into_a_bucket_costs_nothing(tmp_path: Path) -> None:
    """Killed mid-series (with an upload open when one opens within 2 s of the first commit): the
    series is redone elsewhere or adopted, stored once and whole, no upload left open, status and
    verify pass, and the rerun fetches nothing."""
    outcome = run_bucket_dask_worker_kill(tmp_path, workers=2, concurrency=2)
    _assert_nothing_lost(outcome)
    assert outcome.exit_codes == [0]
    assert any(message.startswith("killed worker") for message in outcome.messages), outcome.messages
