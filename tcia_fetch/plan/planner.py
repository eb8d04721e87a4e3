"""Expand a job into planned series, learning every series' expected size in bulk.

Queries (``getSeries`` per filter combination) and explicit UID lists (manifests, CSV, job
file) are expanded concurrently under one limit, de-duplicated in first-seen order, and each
series' expected instance count and byte total come from the rows themselves or, for bare
UIDs, from ``getSeriesMetadata`` in chunks; ``getSeriesSize`` is asked only where a row lacks
the figures. Each series is handed to ``emit`` as soon as it is known, so downloads start
before planning ends; ``emit`` blocks when the download pool is busy (backpressure).

A series that cannot be planned (not on the server, not public, no size) becomes a
``PlanProblem``: reported, never dropped.

Nothing here holds the whole plan (issue 13): explicit UIDs are pulled from the job's compact
lists a chunk at a time, and a query's rows are consumed as an async stream
(:meth:`Planner._query_rows`), each row reduced to its :class:`PlannedSeries` and handed on.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date
from itertools import islice
from typing import TYPE_CHECKING, Protocol, TypeVar, Unpack

import anyio

from tcia_fetch.api.models import RejectedRow, ScreenedRows, SeriesRow, rejected_rows, screen_row
from tcia_fetch.engine.breaker import CircuitBreaker
from tcia_fetch.engine.clock import Clock
from tcia_fetch.engine.retry import RetryPolicy, retry_call
from tcia_fetch.errors import ImplausibleFiguresError, MetadataError, TciaFetchError
from tcia_fetch.job.jobfile import JobSpec, SeriesQuery, UidOrigin
from tcia_fetch.plan.model import PlannedSeries, PlanProblem, PlanSummary, frozen_row
from tcia_fetch.plan.rows import BAD_ROW_REFERENCE, bad_uid_label, series_uid_problem
from tcia_fetch.plan.spool import MEMORY_ROWS, RowSpool
from tcia_fetch.plan.suggest import EmptyQueryExplainer, ExclusionTally, combination_count
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.plausible import implausibility
from tcia_fetch.store.digests import GrowingDigestSet, SortedDigests, sorted_unique, uid_digest

if TYPE_CHECKING:  # the planner needs only the filters' type, not the HTTP client
    from tcia_fetch.api.client import SeriesFilters

__all__ = ["Planner", "PlannerOptions", "SeriesSource"]

_T = TypeVar("_T")


class _Row(Protocol):
    """What the planner reads from a getSeries or getSeriesMetadata row."""

    @property
    def series_uid(self) -> str: ...

    @property
    def image_count(self) -> int | None: ...

    @property
    def file_size(self) -> int | None: ...

    @property
    def series_date(self) -> date | None: ...

    @property
    def series_description(self) -> str | None: ...

    def server_dict(self) -> dict[str, object]: ...


class _SizeRow(Protocol):
    @property
    def total_size_bytes(self) -> int: ...

    @property
    def object_count(self) -> int: ...


class SeriesSource(Protocol):
    """The part of ``NBIAClient`` the planner uses (a seam for tests and other sources)."""

    async def series(
        self,
        **filters: Unpack[SeriesFilters],
    ) -> Sequence[_Row]: ...

    def iter_series_rows(
        self,
        **filters: Unpack[SeriesFilters],
    ) -> AsyncGenerator[Mapping[str, object], None]: ...

    async def series_metadata(
        self, series_uids: Sequence[str], *, collection: str | None = None
    ) -> Sequence[_Row]: ...

    async def series_size(self, series_uid: str) -> _SizeRow | None: ...


#: The most UIDs in the first ``getSeriesMetadata`` of a job (see ``Planner._plan_explicit``).
FIRST_METADATA_CHUNK = 32


@dataclass(frozen=True, slots=True)
class PlannerOptions:
    """How hard the planner may push the server.

    ``metadata_chunk`` UIDs go in one ``getSeriesMetadata`` POST: small enough that the first
    downloads start quickly, large enough that a 2,524-series manifest needs a handful of calls.
    """

    query_concurrency: int = 4
    metadata_chunk: int = 500
    full_metadata: bool = False
    #: Ask the NLST host for UIDs the main host does not know (NLST lives on its own server,
    #: and a bare manifest does not say which host a UID belongs to). Only sensible against
    #: the production archive, so the run turns it on only there.
    nlst_fallback: bool = False
    #: ``getSeriesMetadata`` exists only in v4; on a legacy (v1/v2) server bare UIDs are looked up
    #: one by one with ``getSeries?SeriesInstanceUID=`` instead.
    bulk_metadata: bool = True
    #: Rows of one query answer kept in memory before the rest goes to a temporary file.
    spool_memory_rows: int = MEMORY_ROWS


Emit = Callable[[PlannedSeries], Awaitable[None]]
OnSkip = Callable[[str], Awaitable[None]]


class Planner:
    """Turns a :class:`JobSpec` into a stream of :class:`PlannedSeries`."""

    def __init__(
        self,
        source: SeriesSource,
        job: JobSpec,
        *,
        retry_policy: RetryPolicy,
        clock: Clock,
        skip_uids: Container[str] = frozenset(),
        only_uids: Container[str] | None = None,
        options: PlannerOptions | None = None,
        share: Callable[[str], bool] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._source = source
        #: The run's breaker: the planner's throttles count towards a throttle storm (an outage).
        self._breaker = breaker
        self._job = job
        self._retry_policy = retry_policy
        self._clock = clock
        self._skip_uids = skip_uids
        self._only_uids = only_uids
        #: A shard's test of ownership (``--shard K/N``): other shards' series are not this run's.
        self._share = share
        self._options = options or PlannerOptions()
        # Bookkeeping in compact digests (8 bytes per series, issue 13): a 600,000-series job
        # must not hold a set and two lists of UID strings.
        self._seen = GrowingDigestSet()
        #: The named series when a filter (shard, ``--retry-failed``) keeps only some of the seen
        #: ones; without a filter they are the seen ones and are not kept twice.
        self._named = array("Q")
        self._filtered = share is not None or only_uids is not None
        self.summary = PlanSummary(duplicates=job.duplicates)
        self._explainer = EmptyQueryExplainer(source, call=self._call)
        #: How many named series were skipped because they are already done.
        self.skipped_count = 0

    def named_digests(self) -> SortedDigests:
        """Every unique series this run is responsible for (planned, skipped or unplannable)."""
        return SortedDigests(sorted_unique(self._named)) if self._filtered else self._seen.freeze()

    @property
    def named_count(self) -> int:
        return len(self._named) if self._filtered else len(self._seen)

    async def run(self, emit: Emit) -> PlanSummary:
        """Plan the whole job, handing each series to ``emit`` as soon as it is known."""
        limiter = anyio.CapacityLimiter(max(1, self._options.query_concurrency))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._plan_explicit, emit, limiter)
            for index, query in enumerate(self._job.queries):
                for filters in query.server_filter_sets():
                    tg.start_soon(self._plan_query, index, query, filters, emit, limiter)
        return self.summary

    async def _plan_explicit(self, emit: Emit, limiter: anyio.CapacityLimiter) -> None:
        """Explicit UIDs in chunks, with only a few chunks looked up ahead of the downloads.

        A chunk holds its slot from its metadata lookup until its last series was handed to
        ``emit``: without that bound every chunk of a 600,000-UID manifest would be looked up at
        once and wait, rows in hand, for the pool (issue 13: memory grew with the job).
        """
        ahead = anyio.Semaphore(max(2, self._options.query_concurrency))

        async def one_chunk(chunk: list[tuple[str, str]]) -> None:
            try:
                await self._plan_uids(chunk, emit, limiter)
            finally:
                ahead.release()

        # The job's UIDs are read from their list files as they are needed (blocking reads:
        # in a worker thread, a chunk at a time), never held whole.
        size = max(1, self._options.metadata_chunk)
        # The first chunk is small: the first downloads wait for its answer, which the server
        # builds (and we parse) far sooner for a few dozen series than for hundreds.
        limit = min(size, FIRST_METADATA_CHUNK)
        origins = iter(self._job.explicit_uids)
        try:
            async with anyio.create_task_group() as tg:
                chunk: list[tuple[str, str]] = []
                while batch := await anyio.to_thread.run_sync(_take, origins, size):
                    for origin in batch:
                        if self._claim(origin.uid):
                            chunk.append((origin.uid, origin.origin))
                        if len(chunk) >= limit:
                            await ahead.acquire()
                            tg.start_soon(one_chunk, chunk)
                            chunk, limit = [], size
                if chunk:
                    await ahead.acquire()
                    tg.start_soon(one_chunk, chunk)
        finally:
            if isinstance(origins, Iterator) and hasattr(origins, "close"):
                with anyio.CancelScope(shield=True):  # closes the list file the reader holds
                    await anyio.to_thread.run_sync(origins.close)

    # -- claiming: de-duplication and skip/only filters (no await between check and add) --------

    def _claim(self, uid: str) -> bool:
        digest = uid_digest(uid)
        if not self._seen.add(digest):
            self.summary.duplicates += 1
            return False
        if self._share is not None and not self._share(uid):
            return False
        if self._only_uids is not None and uid not in self._only_uids:
            return False
        if self._filtered:
            self._named.append(digest)
        if uid in self._skip_uids:
            self.skipped_count += 1
            return False
        return True

    # -- explicit UIDs -------------------------------------------------------------------------

    async def _plan_uids(
        self, chunk: list[tuple[str, str]], emit: Emit, limiter: anyio.CapacityLimiter
    ) -> None:
        uids = [uid for uid, _ in chunk]
        try:
            if self._options.bulk_metadata:
                async with limiter:
                    rows = await self._call(lambda: self._source.series_metadata(uids))
            else:
                rows = await self._series_one_by_one(uids, limiter)
        except TciaFetchError as exc:
            if exc.fatal:
                raise
            for uid, origin in chunk:
                self._problem(uid, f"metadata lookup failed: {exc.describe()}", exc.reference, origin)
            return
        by_uid = {row.series_uid: row for row in rows}
        # A row that did not fit fails the series it names, not the chunk of up to 500 (issue 14).
        broken = self._broken_rows(rejected_rows(rows), {uid for uid, _ in chunk}, by_uid)
        missing = [uid for uid, _ in chunk if uid not in by_uid and uid not in broken]
        if missing and self._options.nlst_fallback:
            try:
                async with limiter:
                    nlst_rows = await self._call(
                        lambda: self._source.series_metadata(missing, collection="NLST")
                    )
            except TciaFetchError as exc:
                if exc.fatal:
                    raise
                nlst_rows = []
            by_uid.update((row.series_uid, row) for row in nlst_rows)
        for uid, origin in chunk:
            if uid in broken:
                self._problem(uid, broken[uid], BAD_ROW_REFERENCE, origin)
                continue
            row = by_uid.get(uid)
            if row is None:
                self._problem(
                    uid,
                    "not found on the server, or not public (getSeriesMetadata has no row)",
                    "series-unavailable",
                    origin,
                )
                continue
            await self._plan_row(row, origin, emit, limiter)

    async def _series_one_by_one(self, uids: Sequence[str], limiter: anyio.CapacityLimiter) -> list[_Row]:
        rows: list[_Row] = []
        rejected: list[RejectedRow] = []
        for uid in uids:
            async with limiter:
                answer = await self._call(functools.partial(self._source.series, series_uid=uid))
            rows.extend(answer)
            rejected.extend(rejected_rows(answer))
        return ScreenedRows(rows, rejected)

    @staticmethod
    def _broken_rows(
        rejected: Sequence[RejectedRow], wanted: Container[str], good: Mapping[str, _Row]
    ) -> dict[str, str]:
        """Requested UIDs whose only row did not fit, each with the reason (others are ignored)."""
        broken: dict[str, str] = {}
        for row in rejected:
            uid = row.uid_text
            if uid is not None and uid in wanted and uid not in good:
                broken[uid] = f"the server's metadata row for this series does not fit: {row.reason}"
        return broken

    # -- queries -------------------------------------------------------------------------------

    async def _plan_query(
        self,
        index: int,
        query: SeriesQuery,
        filters: Mapping[str, str],
        emit: Emit,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        origin = f"query[{index}]"
        server_rows = accepted = bad_rows = 0
        failed = False
        tally = ExclusionTally(query)
        pending: list[tuple[str, str]] = []  # full_metadata: UIDs waiting for their lookup
        try:
            async with aclosing(self._query_rows(filters, limiter)) as rows:
                async for row in rows:
                    server_rows += 1
                    if isinstance(row, RejectedRow):  # fails its own series, not the query
                        reason = f"the server's getSeries row does not fit: {row.reason}"
                        self._bad_row(row.uid_text, reason, origin)
                        bad_rows += 1
                        continue
                    if not query.accepts(row.image_count, row.series_date, row.series_description):
                        tally.add(row)
                        continue
                    problem = series_uid_problem(row.series_uid)
                    if problem is not None:  # never a path, a URL or a fatal InputError: this series fails
                        self._bad_row(row.series_uid, problem, origin)
                        bad_rows += 1
                        continue
                    accepted += 1
                    if not self._claim(row.series_uid):
                        continue
                    if not self._options.full_metadata:
                        await self._plan_row(row, origin, emit, limiter)
                        continue
                    pending.append((row.series_uid, origin))
                    if len(pending) >= self._options.metadata_chunk:
                        await self._plan_uids(pending, emit, limiter)
                        pending = []
        except TciaFetchError as exc:
            if exc.fatal:
                raise
            self.summary.query_errors.append(f"{origin} {query.describe()} {filters}: {exc.describe()}")
            failed = True
        if pending:  # claimed before a failure, they are still this run's series
            await self._plan_uids(pending, emit, limiter)
        if accepted or failed or bad_rows:  # bad rows: the query matched; each is a failed series
            return
        # Never silent: say which filter matched nothing, and what was meant.
        self.summary.empty_queries.append(
            await self._explainer.explain(
                origin,
                filters,
                server_rows=server_rows,
                excluded=tally.counts,
                table=index,
                combinations=combination_count(query),
            )
        )

    async def _query_rows(
        self, filters: Mapping[str, str], limiter: anyio.CapacityLimiter
    ) -> AsyncGenerator[SeriesRow | RejectedRow, None]:
        """One ``getSeries`` answer, row by row: the ONE place a query's rows come from.

        The answer is read whole at the server's pace into a spool (memory, then a compressed
        temporary file: plan/spool.py), retried as a whole under ``limiter``; then its rows are
        handed out at the pool's pace, each screened on its own (a row that does not fit comes
        out as a :class:`RejectedRow`).
        """
        spool = RowSpool(memory_rows=self._options.spool_memory_rows)
        try:
            await self._call(functools.partial(self._fill_spool, spool, filters, limiter))
            await anyio.to_thread.run_sync(spool.finish)
            while batch := await anyio.to_thread.run_sync(spool.read_batch):
                for raw in batch:
                    yield screen_row(SeriesRow, raw)
        finally:
            with anyio.CancelScope(shield=True):  # cleanup only: the file is deleted on close
                await anyio.to_thread.run_sync(spool.close)

    async def _fill_spool(
        self, spool: RowSpool, filters: Mapping[str, str], limiter: anyio.CapacityLimiter
    ) -> None:
        # A retry starts over; closing a spilled file blocks, so it goes to a worker thread.
        if spool.spilled:
            await anyio.to_thread.run_sync(spool.reset)
        else:
            spool.reset()
        async with limiter, aclosing(self._source.iter_series_rows(**filters)) as rows:
            async for row in rows:
                spool.add(row)
                if spool.should_spill:
                    await anyio.to_thread.run_sync(spool.spill)

    # -- one row -> one planned series ----------------------------------------------------------

    async def _plan_row(self, row: _Row, origin: str, emit: Emit, limiter: anyio.CapacityLimiter) -> None:
        count, size = row.image_count, row.file_size
        if count is None or size is None:
            # The row lacks the figures: ask getSeriesSize, the slow but authoritative endpoint.
            try:
                async with limiter:
                    sized = await self._call(lambda: self._source.series_size(row.series_uid))
            except TciaFetchError as exc:
                if exc.fatal:
                    raise
                self._problem(row.series_uid, f"size lookup failed: {exc.describe()}", exc.reference, origin)
                return
            if sized is None:
                self._problem(
                    row.series_uid,
                    "the server reports no size for this series (getSeriesSize is empty)",
                    "metadata",
                    origin,
                )
                return
            count, size = sized.object_count, sized.total_size_bytes
        if count <= 0 or size <= 0:
            self._problem(
                row.series_uid,
                f"the server reports an empty series ({count} instances, {size} bytes)",
                "metadata",
                origin,
            )
            return
        implausible = implausibility(count, size)
        if implausible is not None:  # bad server data: this series fails, the job goes on
            self._problem(row.series_uid, implausible, ImplausibleFiguresError.reference, origin)
            return
        item = PlannedSeries(
            series_uid=row.series_uid,
            expectation=SeriesExpectation(row.series_uid, count, size),
            metadata=frozen_row(row.server_dict()),
            origin=origin,
        )
        self.summary.add(item)
        await emit(item)

    def _bad_row(self, uid_text: str | None, reason: str, origin: str) -> None:
        """A row naming a series by an unusable UID: one failed series under a stable label."""
        label = uid_text if uid_text is not None and series_uid_problem(uid_text) is None else None
        label = label or bad_uid_label(uid_text)
        if self._claim(label):
            self._problem(label, reason, BAD_ROW_REFERENCE, origin)

    def _problem(self, uid: str, reason: str, reference: str, origin: str) -> None:
        self.summary.problems.append(PlanProblem(uid, reason, reference, origin))

    async def _call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await retry_call(fn, policy=self._retry_policy, clock=self._clock, breaker=self._breaker)
        except TciaFetchError:
            raise
        except (ValueError, TypeError) as exc:  # a row the models could not read
            raise MetadataError(f"unreadable series metadata: {exc}") from exc


def _take(origins: Iterator[UidOrigin], count: int) -> list[UidOrigin]:
    """The next ``count`` explicit UIDs (blocking: the list file is read; call in a thread)."""
    return list(islice(origins, count))


def unique_uids(items: Iterable[PlannedSeries]) -> list[str]:
    """UIDs of planned series in plan order (for reports and ``--json``)."""
    return [item.series_uid for item in items]
