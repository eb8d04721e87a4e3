"""A Dask worker's lease pool: leases handed from series to series, the cluster cap kept."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tcia_fetch.cluster.leases import LeasePool


class _ClusterSemaphore:
    """A stand-in for ``distributed.Semaphore``: counts round trips and leases out at once."""

    def __init__(self, max_leases: int) -> None:
        self._slots = threading.BoundedSemaphore(max_leases)
        self._lock = threading.Lock()
        self.acquires = 0
        self.releases = 0
        self.out = 0

    def acquire(self) -> bool:
        self._slots.acquire()
        with self._lock:
            self.acquires += 1
            self.out += 1
        return True

    def release(self) -> bool:
        with self._lock:
            self.releases += 1
            self.out -= 1
        self._slots.release()  # BoundedSemaphore: releasing more than taken raises
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_series_reuse_one_lease_and_idle_ones_go_back_after_the_linger() -> None:
    semaphore = _ClusterSemaphore(4)
    opened: list[int] = []
    clock = _Clock()

    def open_semaphore() -> _ClusterSemaphore:
        opened.append(1)
        return semaphore

    pool = LeasePool(open_semaphore, linger_s=0.5, clock=clock)
    for _ in range(5):  # five series one after another on this worker
        with pool.lease():
            assert semaphore.out == 1
        clock.now += 0.1
    assert (semaphore.acquires, opened) == (1, [1])  # one round trip, one semaphore per worker
    assert pool.release_idle() == 0  # idle for 0.1 s only: kept for the next series
    clock.now += 0.5
    assert pool.release_idle() == 1
    assert semaphore.out == 0
    figures = pool.statistics()
    assert (figures.acquired, figures.reused, figures.released, figures.held) == (1, 4, 1, 0)


def test_only_leases_idle_past_the_linger_are_returned_and_busy_ones_never() -> None:
    semaphore = _ClusterSemaphore(3)
    clock = _Clock()
    pool = LeasePool(lambda: semaphore, linger_s=1.0, clock=clock)
    pool.take()
    pool.take()
    pool.take()
    pool.give_back()  # idle since 100.0
    clock.now = 100.8
    pool.give_back()  # idle since 100.8
    clock.now = 101.2
    assert pool.release_idle() == 1  # the one idle since 100.0
    assert semaphore.out == 2  # one idle (recent) and one busy
    assert pool.release_idle(older_than_s=0.0) == 1  # closing: every idle one, never the busy one
    assert semaphore.out == 1
    pool.give_back()
    assert pool.release_idle(older_than_s=0.0) == 1
    assert semaphore.out == 0
    with pytest.raises(RuntimeError):
        pool.give_back()


def test_workers_sharing_a_cap_never_hold_more_leases_than_it_and_return_them_all() -> None:
    cap = 3
    semaphore = _ClusterSemaphore(cap)
    pools = [LeasePool(lambda: semaphore, linger_s=0.0) for _ in range(3)]  # three workers
    peak = 0
    lock = threading.Lock()
    in_flight = 0

    def series(number: int) -> None:
        nonlocal peak, in_flight
        with pools[number % len(pools)].lease():
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            with lock:
                in_flight -= 1

    finished = threading.Event()

    def timers() -> None:  # each worker's runtime returns its idle leases now and then
        while not finished.wait(0.001):
            for pool in pools:
                pool.release_idle()

    timer = threading.Thread(target=timers)
    timer.start()
    try:
        with ThreadPoolExecutor(8) as threads:  # more threads than the cap, as on a real cluster
            list(threads.map(series, range(200)))
    finally:
        finished.set()
        timer.join()
    assert peak <= cap
    assert semaphore.out <= cap
    for pool in pools:
        pool.release_idle(older_than_s=0.0)
    assert semaphore.out == 0
    assert semaphore.acquires == semaphore.releases
    assert sum(p.statistics().acquired + p.statistics().reused for p in pools) == 200
