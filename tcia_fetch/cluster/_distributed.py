"""The only module that imports Dask (``distributed``): connect, submit, a semaphore, errors.

Imported only by a ``--scheduler`` run, so the CLI never pays for Dask otherwise; a missing
install is an :class:`InputError` naming the extra (exit 2, before any traffic). Errors of the
cluster itself (unreachable scheduler, a comm closed under us) become :class:`ClusterError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tcia_fetch.cluster.address import SchedulerAddress
from tcia_fetch.errors import ClusterError, InputError

__all__ = ["Cluster", "LocalClusterHandle", "TaskOutcome", "connect", "local_cluster"]

_CONNECT_TIMEOUT_S = 30.0


def _import() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            "--scheduler needs Dask, which is not installed: pip install 'tcia-fetch[dask]'",
            source="--scheduler",
        ) from exc
    return distributed


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What one submitted task ended with: its result, or why the cluster could not run it."""

    key: str
    result: Any
    error: str | None


class Cluster:
    """A connected asynchronous Dask client (and the local cluster it started, if any)."""

    def __init__(self, distributed: Any, client: Any, local: Any | None) -> None:
        self._distributed = distributed
        self._client = client
        self._local = local
        self._futures: dict[Any, str] = {}
        self._completed: Any = distributed.as_completed(with_results=False)

    @property
    def address(self) -> str:
        return str(self._client.scheduler.address)

    async def workers(self) -> list[str]:
        """Addresses of the workers connected now."""
        try:
            info = await self._client.scheduler.identity()
        except (OSError, self._distributed.comm.core.CommClosedError) as exc:
            raise ClusterError(f"the Dask scheduler stopped answering: {exc}") from exc
        return sorted(info.get("workers", {}))

    async def run_on_workers(self, function: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """Run ``function(*args)`` once on every worker; worker address → result or exception."""
        try:
            result: dict[str, Any] = await self._client.run(function, *args, on_error="return")
        except (OSError, self._distributed.comm.core.CommClosedError) as exc:
            raise ClusterError(f"the Dask cluster stopped answering: {exc}") from exc
        return result

    async def semaphore(self, name: str, max_leases: int) -> Any:
        """A cluster-wide semaphore (lease-based: a dead worker's leases expire and return)."""
        return await self._distributed.Semaphore(max_leases=max_leases, name=name)

    def submit(self, function: Callable[..., Any], *args: Any, key: str, retries: int) -> None:
        """Queue one task; its outcome arrives through :meth:`completed`."""
        future = self._client.submit(function, *args, key=key, retries=retries, pure=False)
        self._futures[future] = key
        self._completed.add(future)

    @property
    def pending(self) -> int:
        return len(self._futures)

    async def next_completed(self) -> TaskOutcome:
        """The next finished task (a task that raised, or whose workers kept dying, has ``error``)."""
        future = await self._completed.__anext__()
        key = self._futures.pop(future)
        try:
            result = await future
        except self._distributed.KilledWorker as exc:
            return TaskOutcome(key, None, f"the Dask workers running it died repeatedly ({exc})")
        except Exception as exc:  # any task error is this series' failure, never the run's
            return TaskOutcome(key, None, f"{type(exc).__name__}: {exc}")
        finally:
            future.release()
        return TaskOutcome(key, result, None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.close()
        if self._local is not None:
            with contextlib.suppress(Exception):
                await self._local.close()


@contextlib.asynccontextmanager
async def connect(address: SchedulerAddress, *, threads_per_worker: int) -> AsyncIterator[Cluster]:
    """Connect to ``address`` (starting a local cluster for ``local:N``) for the block's duration."""
    distributed = _import()
    local = None
    try:
        if address.local_workers is not None:
            local = await distributed.LocalCluster(
                n_workers=address.local_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                asynchronous=True,
                dashboard_address=":0",
            )
            target: Any = local
        else:
            target = address.url
        client = await distributed.Client(target, asynchronous=True, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        if local is not None:
            await local.close()
        raise ClusterError(f"cannot reach the Dask scheduler {address.describe()}: {exc}") from exc
    cluster = Cluster(distributed, client, local)
    try:
        yield cluster
    finally:
        await cluster.close()


def threads_for(concurrency: int, workers: int) -> int:
    """Threads per local worker so that the cluster can hold ``concurrency`` downloads at once."""
    return max(1, math.ceil(concurrency / max(1, workers)))


def first_error(results: Iterable[Any]) -> BaseException | None:
    for result in results:
        if isinstance(result, BaseException):
            return result
    return None


class LocalClusterHandle:
    """A running local cluster as the campaign and benchmarks drive it (address, busy workers, pids)."""

    def __init__(self, address: str, client: Any) -> None:
        self.address = address
        self._client = client

    def busy_workers(self) -> dict[str, int]:
        """Worker address → tasks it is processing now (only busy workers)."""
        return {worker: len(keys) for worker, keys in self._client.processing().items() if keys}

    def worker_pid(self, worker: str) -> int:
        return int(self._client.run(_pid, workers=[worker])[worker])


def _pid() -> int:
    import os

    return os.getpid()


@contextlib.contextmanager
def local_cluster(
    *, workers: int, threads_per_worker: int, lease_timeout_s: float | None = None
) -> Iterator[LocalClusterHandle]:
    """A local cluster of worker processes for a ``tcp://`` run (tests, campaign, benchmarks).

    ``lease_timeout_s`` shortens how long a killed worker's semaphore leases stay held
    (30 s by default in distributed).
    """
    distributed = _import()
    import dask

    config: dict[str, str] = {}
    if lease_timeout_s is not None:
        config = {
            "distributed.scheduler.locks.lease-timeout": f"{lease_timeout_s}s",
            "distributed.scheduler.locks.lease-validation-interval": f"{max(0.2, lease_timeout_s / 4)}s",
        }
    with (
        dask.config.set(config),
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield LocalClusterHandle(str(cluster.scheduler_address), client)
