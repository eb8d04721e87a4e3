"""The only module that imports Dask (``distributed``): connect, submit, a semaphore, errors.

Imported only by a ``--scheduler`` run, so the CLI never pays for Dask otherwise; a missing
install is an :class:`InputError` naming the extra (exit 2, before any traffic). Errors of the
cluster itself (unreachable scheduler, a comm closed under us) become :class:`ClusterError`.

Local worker processes come from a *forkserver* that has imported Dask and the worker runtime
once (:func:`_start_forkserver`). With distributed's default (``spawn``) every worker process
imported both itself, and the first task on each worker imported the runtime again: on a busy
2-core login node that was 10-25 s before the first download and 4 s to shut down, most of
the gap to a single process (benchmarks/scaleout.py). ``fork`` would be faster still but is not
safe here: the client has threads and holds the destination's lock file open.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from tcia_fetch.cluster.address import SchedulerAddress
from tcia_fetch.errors import ClusterError, InputError

__all__ = ["Cluster", "LocalClusterHandle", "TaskOutcome", "connect", "local_cluster", "prepare"]

_CONNECT_TIMEOUT_S = 30.0
#: What the forkserver imports once, so that every local worker starts with it loaded.
_PRELOAD: Final = ("distributed", "tcia_fetch.cluster.remote")


_MISSING = "--scheduler needs Dask, which is not installed: pip install 'tcia-fetch[dask]'"


def require() -> None:
    """Fail now (exit 2, before any traffic) when Dask is missing, without paying for its import
    (over a second of CPU; :func:`connect` imports it on a thread while the client plans)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InputError(_MISSING, source="--scheduler")


def _import() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise InputError(_MISSING, source="--scheduler") from exc
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

    async def workers(self) -> dict[str, int]:
        """The workers connected now: address → its threads (how many tasks it runs at once)."""
        try:
            info = await self._client.scheduler.identity()
        except (OSError, self._distributed.comm.core.CommClosedError) as exc:
            raise ClusterError(f"the Dask scheduler stopped answering: {exc}") from exc
        workers: dict[str, Any] = info.get("workers", {})
        return {address: max(1, int(info.get("nthreads", 1))) for address, info in sorted(workers.items())}

    async def run_on_workers(self, function: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """Run ``function(*args)`` once on every worker; worker address → result or exception."""
        try:
            result: dict[str, Any] = await self._client.run(function, *args, on_error="return")
        except (OSError, self._distributed.comm.core.CommClosedError) as exc:
            raise ClusterError(f"the Dask cluster stopped answering: {exc}") from exc
        return result

    async def semaphore(self, name: str, max_leases: int) -> Callable[[], Any]:
        """A cluster-wide semaphore (lease-based: a dead worker's leases expire and return),
        registered now; returns the picklable factory a worker calls once to bind it there.

        Not the semaphore itself as a task argument: every unpickled copy registers again and
        starts a lease-refresh timer on its worker that is never stopped (one per series)."""
        client = self._client  # explicit: another client in this process must not be picked
        await self._distributed.Semaphore(
            max_leases=max_leases, name=name, scheduler_rpc=client.scheduler, loop=client.loop
        )
        return functools.partial(_worker_semaphore, name, max_leases)

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


def _start_forkserver() -> bool:
    """Start the process local workers fork from, preloading Dask and the worker runtime; False
    where there is no forkserver (Windows: workers are spawned, as distributed does by default).

    Started before this process imports Dask, so that both imports run at once (two processes
    get two shares of a busy CPU). ``set_forkserver_preload`` only counts before the forkserver
    starts; it is process-wide and the server is reused by later clusters.
    """
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(_PRELOAD))
    multiprocessing.forkserver.ensure_running()
    return True


def _local_config(distributed: Any, forkserver: bool) -> dict[str, object]:
    """Dask config to hold while a local cluster lives (a nanny restarting a killed worker reads
    it again): workers forked from the preloaded forkserver, without the statistical profiler
    (it samples every thread's stack 100 times a second for the dashboard; on a loaded 2-core
    node it takes the GIL from the downloads).

    distributed would set its own forkserver preload on first use, importing numpy and pandas
    into this (client) process to test for them: the private flag that says "already set" keeps
    it from doing so, and is left alone if a future release renames it (a wasted import then,
    nothing worse: the server is already running with our preload).
    """
    config: dict[str, object] = {"distributed.worker.profile.enabled": False}
    if not forkserver:
        return config
    utils = distributed.utils
    if hasattr(utils, "_forkserver_preload_set"):
        utils._forkserver_preload_set = True
    return config | {"distributed.worker.multiprocessing-method": "forkserver"}


async def prepare(address: SchedulerAddress) -> tuple[Any, bool]:
    """Import Dask and (for ``local:N``) start the preloaded forkserver, on threads: the slow part
    of a start that commits to nothing (no scheduler, no worker). The runner calls it while the
    first series is being planned, then :func:`connect` only once there is something to send;
    both are idempotent (the import is cached, the forkserver reused). (distributed, forkserver)."""
    local = address.local_workers is not None
    forkserver = local and await anyio.to_thread.run_sync(_start_forkserver)
    distributed = await anyio.to_thread.run_sync(_import)  # the event loop keeps planning meanwhile
    return distributed, forkserver


@contextlib.asynccontextmanager
async def connect(address: SchedulerAddress, *, threads_per_worker: int) -> AsyncIterator[Cluster]:
    """Connect to ``address`` (starting a local cluster for ``local:N``) for the block's duration."""
    local = address.local_workers is not None
    distributed, forkserver = await prepare(address)
    import dask

    config = _local_config(distributed, forkserver) if local else {}
    with dask.config.set(config):
        async with _connect(distributed, address, threads_per_worker) as cluster:
            yield cluster


@contextlib.asynccontextmanager
async def _connect(
    distributed: Any, address: SchedulerAddress, threads_per_worker: int
) -> AsyncIterator[Cluster]:
    # Started while the client plans: a planning error cancels the start, and a half-started
    # local cluster is closed then too (shielded), never left running.
    local = None
    try:
        if address.local_workers is not None:
            local = distributed.LocalCluster(
                n_workers=address.local_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                asynchronous=True,
                dashboard_address=":0",
            )
            await local  # starts the scheduler and the workers
            target: Any = local
        else:
            target = address.url
        client = await distributed.Client(target, asynchronous=True, timeout=_CONNECT_TIMEOUT_S)
    except BaseException as exc:
        if local is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await local.close()
        if isinstance(exc, (OSError, TimeoutError)):
            raise ClusterError(f"cannot reach the Dask scheduler {address.describe()}: {exc}") from exc
        raise
    cluster = Cluster(distributed, client, local)
    try:
        yield cluster
    finally:
        with anyio.CancelScope(shield=True):
            await cluster.close()


def _worker_semaphore(name: str, max_leases: int) -> Any:
    """On a worker, in a task: the client's semaphore by name, bound to this worker."""
    return _import().Semaphore(max_leases=max_leases, name=name)


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
    *,
    workers: int,
    threads_per_worker: int,
    lease_timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[LocalClusterHandle]:
    """A local cluster of worker processes for a ``tcp://`` run (tests, campaign, benchmarks).

    ``lease_timeout_s`` shortens how long a killed worker's semaphore leases stay held
    (30 s by default in distributed). ``env`` is set in every worker process (by its nanny,
    ``distributed.nanny.environ``; a variable of this process's own environment wins): the
    campaign's workers reach its loopback S3 as real workers reach theirs, from their environment.
    """
    forkserver = _start_forkserver()
    distributed = _import()
    import dask

    config = _local_config(distributed, forkserver)
    if lease_timeout_s is not None:
        config |= {
            "distributed.scheduler.locks.lease-timeout": f"{lease_timeout_s}s",
            "distributed.scheduler.locks.lease-validation-interval": f"{max(0.2, lease_timeout_s / 4)}s",
        }
    if env:
        config |= {"distributed.nanny.environ": dict(env)}
    with (
        dask.config.set(config),
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield LocalClusterHandle(str(cluster.scheduler_address), client)
