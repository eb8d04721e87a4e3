"""``--concurrency N`` means N downloads in flight, end to end, measured on the server's side."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

import pytest

from tcia_fetch.engine.report import RunEvent
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.store._fs import DirectorySyncs
from tcia_fetch.store.destination import Destination
from tcia_fetch.testing import Catalog, FakeNBIA, LoadModel

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(
        seed=5,
        collections=1,
        patients_per_collection=12,
        series_per_study=8,
        instances_per_series=(1, 1),
        instance_bytes=(2_000, 3_000),
    )


def _job(tmp_path: Path, catalog: Catalog) -> Path:
    job = tmp_path / "job.toml"
    listed = ", ".join(f'"{entry.uid}"' for entry in catalog.series)
    job.write_text(f"[series]\nuids = [{listed}]\n")
    return job


async def test_concurrency_32_reaches_32_in_flight_despite_a_lower_config_pool(
    tmp_path: Path, catalog: Catalog
) -> None:
    # A slow first byte keeps every admitted download open long enough to pile up on the server.
    config = tmp_path / "config.toml"
    config.write_text("[server]\nmax_connections = 8\n")
    fake = FakeNBIA(catalog, load=LoadModel(first_byte_delay_s=1.0))
    events: list[RunEvent] = []
    async with fake.serve() as server:
        report = await fetch(
            _job(tmp_path, catalog),
            RunOptions(out=tmp_path / "out", base_url=server.base_url, config_file=config, concurrency=32),
            on_event=events.append,
        )
        stats = server.stats()
    assert report.done == len(catalog.series) == 96
    assert stats.peak_concurrent_downloads == 32
    assert stats.rate_limited_responses == 0
    warnings = [event.message for event in events if event.kind == "warning"]
    assert len(warnings) == 1 and "max_connections = 8" in warnings[0] and "32" in warnings[0]
    assert report.engine["warnings"] == warnings


async def test_the_server_keeps_every_slot_busy_while_finished_series_are_published(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Publishing (renames, fsyncs, journal) is made slow: a worker that holds its download slot
    # until its series is durable would leave the server with 3 of 4 downloads meanwhile.
    fake = FakeNBIA(catalog, load=LoadModel(first_byte_delay_s=0.3))
    seen_while_publishing: list[int] = []
    original = Destination.publish

    def slow_publish(
        self: Destination, staging: Path, relative: PurePosixPath, *, deferred: DirectorySyncs | None = None
    ) -> Path:
        time.sleep(0.05)
        seen_while_publishing.append(fake.state.stats.active_downloads)
        return original(self, staging, relative, deferred=deferred)

    monkeypatch.setattr(Destination, "publish", slow_publish)
    async with fake.serve() as server:
        report = await fetch(
            _job(tmp_path, catalog),
            RunOptions(out=tmp_path / "out", base_url=server.base_url, concurrency=4),
        )
        stats = server.stats()
    assert report.done == len(catalog.series)
    assert stats.peak_concurrent_downloads == 4  # --concurrency is still the server's bound
    assert max(seen_while_publishing) == 4


async def test_no_warning_without_a_conflicting_config(tmp_path: Path, catalog: Catalog) -> None:
    events: list[RunEvent] = []
    async with FakeNBIA(catalog).serve() as server:
        report = await fetch(
            _job(tmp_path, catalog),
            RunOptions(out=tmp_path / "out", base_url=server.base_url, concurrency=4),
            on_event=events.append,
        )
        stats = server.stats()
    assert report.done == len(catalog.series)
    assert stats.peak_concurrent_downloads <= 4
    assert not [event for event in events if event.kind == "warning"]


async def test_a_server_cap_is_learned_from_its_first_429s_and_held(tmp_path: Path, catalog: Catalog) -> None:
    # The server takes 6 downloads at once and answers 429 + Retry-After: 1 above that; the
    # run asks for 16. A wave of starts would be refused wholesale: spaced starts cost a few.
    load = LoadModel(first_byte_delay_s=0.3, max_concurrent_downloads=6, retry_after_s=1.0)
    async with FakeNBIA(catalog, load=load).serve() as server:
        report = await fetch(
            _job(tmp_path, catalog),
            RunOptions(out=tmp_path / "out", base_url=server.base_url, concurrency=16),
        )
        stats = server.stats()
    assert report.done == len(catalog.series), stats
    assert stats.peak_concurrent_downloads == 6, (stats, report.engine)
    assert 1 <= stats.rate_limited_responses <= 4, (stats, report.engine)  # learning + a rare probe
    assert report.engine["limiter"]["learned_cap"] == 6, (stats, report.engine)
    # The ramp was paced by the server's answers (a loopback round trip), not the fixed 50 ms.
    assert report.engine["limiter"]["shortest_ramp_step_s"] < 0.05, report.engine
