"""engine/space.py: a series starts only when its staging bytes fit in the free space."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tcia_fetch.engine.space import (
    DEFAULT_RESERVE_BYTES,
    SpaceGuard,
    space_refusal_error,
    staging_bytes_needed,
)
from tcia_fetch.errors import DiskFullError, InsufficientSpaceError
from tcia_fetch.series.expectation import SeriesExpectation

pytestmark = pytest.mark.anyio

GIB = 1 << 30


class Disk:
    """A filesystem whose free space the test sets."""

    def __init__(self, total: int, free: int) -> None:
        self.total = total
        self.free = free

    def __call__(self, path: Path) -> tuple[int, int, int]:
        return self.total, self.total - self.free, self.free


def test_needs_cover_the_claim_and_the_archive_kinds() -> None:
    claim = SeriesExpectation("1.2", 100, 50_000_000)
    dicom = staging_bytes_needed(claim, "dicom")
    zipped = staging_bytes_needed(claim, "zip")
    tar = staging_bytes_needed(claim, "tar.zst")
    assert 50_000_000 < dicom < 52_000_000
    assert 50_500_000 < zipped < 52_000_000
    assert tar > zipped + 50_000_000  # the archive plus one spooled member, worst case


def test_reserve_is_small_and_follows_the_filesystem(tmp_path: Path) -> None:
    guard = SpaceGuard(tmp_path)
    assert guard.reserve_for(1 << 40) == DEFAULT_RESERVE_BYTES
    assert guard.reserve_for(64 << 20) == (64 << 20) // 100
    assert SpaceGuard(tmp_path, reserve_bytes=5).reserve_for(1 << 40) == 5
    with pytest.raises(ValueError, match="reserve_bytes"):
        SpaceGuard(tmp_path, reserve_bytes=-1)


async def test_a_series_that_fits_goes_ahead_and_holds_its_bytes(tmp_path: Path) -> None:
    guard = SpaceGuard(tmp_path, reserve_bytes=0, usage=Disk(10 * GIB, 4 * GIB))
    async with guard.hold("a", 3 * GIB):
        assert guard.held_bytes == 3 * GIB
    assert guard.held_bytes == 0


async def test_a_series_larger_than_the_free_space_is_refused_even_alone(tmp_path: Path) -> None:
    guard = SpaceGuard(tmp_path, reserve_bytes=GIB, usage=Disk(10 * GIB, 4 * GIB))
    with pytest.raises(InsufficientSpaceError) as caught:
        async with guard.hold("big", 3 * GIB + 1):
            pytest.fail("admitted a series that cannot fit")
    error = caught.value
    assert (error.fatal, error.retryable, error.series_uid) == (False, False, "big")
    assert "3,221,225,473 bytes" in error.message and "4,294,967,296 bytes free" in error.message


async def test_a_full_destination_ends_the_run_like_enospc(tmp_path: Path) -> None:
    guard = SpaceGuard(tmp_path, reserve_bytes=GIB, usage=Disk(10 * GIB, GIB - 1))
    with pytest.raises(DiskFullError, match="less than the 1,073,741,824-byte reserve") as caught:
        async with guard.hold("tiny", 1):
            pass
    assert caught.value.fatal and caught.value.exit_code == 3


async def test_a_series_that_fits_after_the_others_waits_for_them(tmp_path: Path) -> None:
    disk = Disk(10 * GIB, 4 * GIB)
    guard = SpaceGuard(tmp_path, reserve_bytes=0, usage=disk)
    order: list[str] = []
    first_in = anyio.Event()
    let_first_go = anyio.Event()
    deferred = anyio.Event()

    async def first() -> None:
        async with guard.hold("first", 3 * GIB):
            order.append("first in")
            first_in.set()
            await let_first_go.wait()
        order.append("first out")

    async def second() -> None:
        await first_in.wait()
        original = guard._released

        class Watched:
            async def wait(self) -> None:  # the guard decided to defer: say so, then wait
                deferred.set()
                await original.wait()

            def set(self) -> None:
                original.set()

        guard._released = Watched()  # type: ignore[assignment]
        async with guard.hold("second", 2 * GIB):
            order.append("second in")

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        group.start_soon(second)
        await first_in.wait()
        await deferred.wait()
        assert order == ["first in"] and guard.deferred == 1  # deferred, not failed
        let_first_go.set()
    assert order == ["first in", "first out", "second in"]


async def test_a_reading_serves_a_second_less_what_ended_and_never_refuses_alone(tmp_path: Path) -> None:
    disk = Disk(10 * GIB, 4 * GIB)
    now = [100.0]
    guard = SpaceGuard(tmp_path, reserve_bytes=0, usage=disk, clock=lambda: now[0])
    for _ in range(50):  # many tiny series within a second: one statvfs
        async with guard.hold("tiny", 1 << 20):
            pass
    assert guard.readings == 1
    async with guard.hold("big", 3 * GIB):  # the cached 4 GiB less 50 MiB that ended: admitted
        pass
    assert guard.readings == 1
    disk.free = 4 * GIB  # meanwhile another program freed what "big" used
    # The cache now says under 1 GiB: not enough for 2 GiB, so the guard reads again and admits.
    async with guard.hold("next", 2 * GIB):
        pass
    assert guard.readings == 2
    disk.free = GIB  # "next" wrote its 2 GiB, and another program 1 GiB more
    with pytest.raises(InsufficientSpaceError) as caught:  # the cache says 2 GiB: read afresh
        async with guard.hold("too-big", 3 * GIB):
            pass
    assert "1,073,741,824 bytes free" in caught.value.message  # decided on the fresh reading
    assert guard.readings == 3
    now[0] += 1.5  # a stale reading is read again even for a series that would fit
    async with guard.hold("tiny", 1):
        pass
    assert guard.readings == 4


def test_series_set_aside_end_the_run_as_disk_full() -> None:
    refused = [
        InsufficientSpaceError(f"needs {n} bytes; not enough free space", series_uid=f"1.{n}") for n in (5, 6)
    ]
    error = space_refusal_error(refused)
    assert isinstance(error, DiskFullError) and error.fatal and error.exit_code == 3
    assert error.message.startswith(
        "2 series did not fit in the free space and were not started: 1.5 and 1 more"
    )
