"""One series end to end: stream the archive, verify it inline, publish it atomically, record it.

Order of a successful attempt, and why each step is where it is:

1. wait for the circuit breaker, an adaptive-concurrency slot and the shared pacer, so a
   struggling server sees fewer requests, not more;
2. stream ``getImage`` into a private staging directory on the destination's filesystem, the
   extractor checking names, CRCs, caps, counts, sizes and MD5s as bytes arrive (in a worker
   thread: inflating and hashing must not stall other downloads);
3. record ``verified`` in the journal, rename the staging directory into place, record
   ``done`` (together with the other series that finished meanwhile: engine/commit.py's
   GroupPublisher). A crash between any two steps is repaired by startup reconciliation:
   nothing unverified is ever at a final path, and a published series is never re-downloaded.

Before step 1, the server's figures must be plausible (series/plausible.py) and the series'
staging bytes must fit in the free space (engine/space.py); neither costs a request.

Failures of one series are retried under its :class:`RetryState` and finally recorded as
``failed`` with the reason; only fatal errors (disk full, destination unusable, auth) leave
this module and stop the run. A failed attempt keeps nothing alive into the retry wait: its
extractor is dropped and the exception's tracebacks (which reference the attempt's frames,
batches and extractor) are cleared before sleeping.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Literal, Protocol

import anyio
import anyio.to_thread

from tcia_fetch.engine.breaker import CircuitBreaker
from tcia_fetch.engine.budget import ByteBudget, budget_for
from tcia_fetch.engine.clock import Clock
from tcia_fetch.engine.commit import GroupCommit, GroupPublisher
from tcia_fetch.engine.concurrency import AdaptiveLimiter, Slot
from tcia_fetch.engine.pacer import ByteRateLimiter, Pacer
from tcia_fetch.engine.report import RunEvent, RunStats, SeriesFailure
from tcia_fetch.engine.retry import RetryPolicy, RetryState
from tcia_fetch.engine.space import SpaceGuard, staging_bytes_needed
from tcia_fetch.errors import (
    ArchiveTooLargeError,
    CountMismatchError,
    DiskFullError,
    ImplausibleFiguresError,
    InsufficientSpaceError,
    IntegrityError,
    InvalidParameterError,
    RateLimitedError,
    RequestTimeoutError,
    SeriesFailedError,
    SizeMismatchError,
    StallError,
    TciaFetchError,
)
from tcia_fetch.plan.model import PlannedSeries
from tcia_fetch.series.archive import archive_name
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.extract import SeriesExtractor, VerifiedSeries
from tcia_fetch.series.plausible import check_plausible
from tcia_fetch.store.home import SeriesHome, StreamedArchive
from tcia_fetch.store.journal import FileEntry, Journal, SeriesRecord
from tcia_fetch.store.records import json_safe_metadata
from tcia_fetch.store.seriespath import SeriesPaths

__all__ = ["FEED_BATCH_BYTES", "FINISHING_WORKERS", "ImageSource", "SeriesJob", "SeriesWorker", "pool_size"]

#: Network chunks are gathered into batches of about this size before one hop to a thread:
#: large enough that thread hand-offs cost nothing next to inflating and hashing.
FEED_BATCH_BYTES = 1 << 20

#: See ``SeriesWorker.extractors``: a few more than the cores, so that fsync waits overlap work.
EXTRACTOR_THREADS = max(6, 2 * (os.cpu_count() or 1) + 2)

#: Workers beyond ``--concurrency``: they verify, fsync and publish series whose bodies are in
#: while the download slots serve the next ones (a tiny series spends as long on its fsyncs as
#: on the network). Few: each may hold a staged series and an extractor.
FINISHING_WORKERS = 8


def pool_size(concurrency: int) -> int:
    """How many workers a run of ``concurrency`` download slots starts."""
    return concurrency + min(concurrency, FINISHING_WORKERS)


#: Verification failures that may mean the series changed on the server after planning: the
#: worker asks ``getSeriesSize`` once more before spending its integrity budget on them.
_FIGURES_DISAGREE = (CountMismatchError, SizeMismatchError, ArchiveTooLargeError)
#: Refusals decided before any request: they say nothing about the server's health.
_REFUSED_BEFORE_REQUEST = (ImplausibleFiguresError,)


class _Stream(Protocol):
    def __aiter__(self) -> _Stream: ...

    async def __anext__(self) -> bytes: ...


class _StreamContext(Protocol):
    async def __aenter__(self) -> _Stream: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> bool | None: ...


class _SizeRow(Protocol):
    @property
    def total_size_bytes(self) -> int: ...

    @property
    def object_count(self) -> int: ...


class ImageSource(Protocol):
    """The part of ``NBIAClient`` a worker uses."""

    def stream_image(
        self,
        series_uid: str,
        *,
        new_file_names: bool = False,
        include_md5: bool = True,
        collection: str | None = None,
    ) -> _StreamContext: ...

    def stream_image_with_md5(self, series_uid: str, *, collection: str | None = None) -> _StreamContext: ...

    async def series_size(self, series_uid: str) -> _SizeRow | None: ...


@dataclass(slots=True)
class _Progress:
    """What one attempt delivered before it ended (read by the retry decision)."""

    dicom_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SeriesJob:
    """How every series of a run is fetched and stored."""

    layout: str
    keep: Literal["dicom", "zip", "tar.zst"]
    verify_md5: bool
    new_file_names: bool
    fsync: bool = True


@dataclass(slots=True)
class SeriesWorker:
    """Shared machinery of a run; ``fetch`` handles one planned series to its end."""

    source: ImageSource
    destination: SeriesHome
    journal: Journal
    job: SeriesJob
    run_id: str
    retry_policy: RetryPolicy
    clock: Clock
    pacer: Pacer
    limiter: AdaptiveLimiter
    breaker: CircuitBreaker
    bandwidth: ByteRateLimiter | None
    stats: RunStats
    on_event: Callable[[RunEvent], None] | None = None
    damaged: Container[str] = frozenset()
    failures: list[SeriesFailure] = field(default_factory=list)
    commit: GroupCommit = field(init=False)
    publisher: GroupPublisher = field(init=False)
    #: Threads inflating, hashing and writing at once. The work is CPU-bound: threads beyond the
    #: cores add nothing but memory (each holds its output and grows its own malloc arena), so
    #: 64 streams share a few extractor threads; their batches wait within the byte budget.
    extractors: anyio.CapacityLimiter = field(init=False)
    #: Set for the rest of the run when the server refuses ``IncludeMD5`` on getImage (a
    #: deployment older than 2025-11): MD5 lists then come from ``getImageWithMD5Hash``.
    md5_via_legacy_endpoint: bool = False
    rng: random.Random = field(default_factory=random.Random)
    #: Body bytes held by all downloads together (see engine/budget.py); the run sizes it.
    budget: ByteBudget = field(default_factory=lambda: budget_for(8))
    #: Free-space check before each attempt (engine/space.py); None checks nothing.
    space: SpaceGuard | None = None
    #: Series that did not fit in the free space even alone. With ``set_aside_unfit`` they are
    #: collected here for the run to end on (space_refusal_error); otherwise the first one is
    #: at once a fatal DiskFullError.
    set_aside_unfit: bool = False
    unfit: list[InsufficientSpaceError] = field(default_factory=list)
    #: Where each series is published (its layout path, a recorded path for a repair, or a
    #: second choice when another series holds it); the run passes one knowing damaged paths.
    paths: SeriesPaths | None = None

    def __post_init__(self) -> None:
        if self.paths is None:
            self.paths = SeriesPaths(self.job.layout, self.destination)
        self.commit = GroupCommit(self.journal)
        self.publisher = GroupPublisher(self.journal)
        self.extractors = anyio.CapacityLimiter(EXTRACTOR_THREADS)

    async def fetch(self, item: PlannedSeries) -> bool:
        """Fetch one series until it is verified on disk or its budget is spent. True when done."""
        state = RetryState(self.retry_policy, self.rng, clock=self.clock)
        expectation = item.expectation
        refreshed = False
        switched_endpoint = False
        while True:
            progress = _Progress()
            try:
                await self._attempt(item, expectation, progress)
                return True
            except TciaFetchError as exc:
                if exc.fatal:
                    raise
                _drop_tracebacks(exc)  # nothing of the failed attempt may live on through them
                if isinstance(exc, InsufficientSpaceError):
                    return self._set_aside(exc)
                if not switched_endpoint and self._fall_back_for_md5(exc):
                    switched_endpoint = True  # once per series: the MD5 endpoint cannot refuse it
                    continue
                if not isinstance(exc, _REFUSED_BEFORE_REQUEST):
                    self._feedback(item.series_uid, exc)
                if progress.dicom_bytes and not isinstance(exc, IntegrityError):
                    # A transfer that broke after real progress says little about the server.
                    state.note_progress()
                if (
                    isinstance(exc, (CountMismatchError, SizeMismatchError, ArchiveTooLargeError))
                    and not refreshed
                ):
                    # The server's figures may have changed since planning: ask once more.
                    refreshed = True
                    expectation = await self._refresh_expectation(item, expectation)
                delay = state.next_delay(exc)
                if delay is None:
                    await self._record_failure(item, exc, state.attempts_made)
                    return False
                self.stats.retries += 1
                self._emit(RunEvent("retry", item.series_uid, exc.describe(), delay))
                await self.clock.sleep(delay)

    # -- one attempt ---------------------------------------------------------------------------

    async def _attempt(
        self, item: PlannedSeries, expectation: SeriesExpectation, progress: _Progress
    ) -> None:
        check_plausible(expectation)  # the caps below are only as good as the figures
        if self.space is None:
            await self._attempt_in_room(item, expectation, progress)
            return
        need = staging_bytes_needed(expectation, self.job.keep)
        async with self.space.hold(item.series_uid, need):
            await self._attempt_in_room(item, expectation, progress)

    async def _attempt_in_room(
        self, item: PlannedSeries, expectation: SeriesExpectation, progress: _Progress
    ) -> None:
        await self.breaker.wait_closed()
        assert self.paths is not None
        target = _Target(self.destination, item.series_uid, expectation, self.job, item.metadata, self.paths)
        received = _Received()
        try:
            # The slot is one download in flight on the server: it is given back as soon as the
            # body is in, before the last checks and fsyncs and before publishing (renames,
            # fsyncs, the journal's group commit). The pool has more workers than slots
            # (pool_size), so the next download starts while this one is made durable; staged
            # series stay bounded by the pool, their bytes by the budget.
            async with self.limiter.slot() as slot:
                await self.pacer.wait_turn()
                started = self.clock.monotonic()
                self.stats.in_flight += 1
                try:
                    await self._receive(item, target, received, progress, slot)
                except TciaFetchError as exc:
                    # Before the slot is given back: a waiting worker must not start into the
                    # same 429, and the limiter must count what the server took alongside this one.
                    self._signal(exc, slot)
                    raise
                finally:
                    self.stats.in_flight -= 1
                self.limiter.on_success(self.clock.monotonic() - started, received.body_bytes)
                self.pacer.on_success()
            # The last batch and the final checks share one thread hand-off: for the many tiny
            # series of a big manifest that is one of the few per-series costs left to trim.
            verified = await anyio.to_thread.run_sync(
                target.feed_and_finish, received.take_batch(), limiter=self.extractors
            )
            await target.seal()
            self.budget.release(received.give_back())
            received.counted = self._count_progress(target, received.counted)
        except BaseException:
            self.budget.release(received.give_back())
            self.stats.dicom_bytes -= received.counted
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(target.discard)
            raise
        finally:
            target.close()
        assert target.staging is not None
        staging = target.staging
        try:
            await self._publish(item, verified, staging)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.destination.discard, staging)
            raise

    async def _receive(
        self, item: PlannedSeries, target: _Target, received: _Received, progress: _Progress, slot: Slot
    ) -> None:
        """Read the body into ``target`` in batches; the last batch is left in ``received``.

        The staging directory and the extractor are made in the first thread hop, together with
        the first batch: a refused request (429) costs no directory.
        """
        budget = self.budget
        read_bytes = budget.read_bytes
        if self.md5_via_legacy_endpoint:
            stream_cm = self.source.stream_image_with_md5(item.series_uid, collection=item.collection)
        else:
            stream_cm = self.source.stream_image(
                item.series_uid,
                new_file_names=self.job.new_file_names,
                include_md5=self.job.verify_md5,
                collection=item.collection,
            )
        async with stream_cm as stream:
            self.breaker.on_success()  # response headers arrived: the server is alive
            slot.admitted()
            chunks = aiter(stream)
            while True:
                # Reserve the next read before making it, so that the bytes every stream
                # holds stay within one global budget (a read returns at most read_bytes).
                if not budget.try_acquire(read_bytes):
                    if received.batch:  # hand over what we hold before waiting for others to
                        await self._feed(target, received, progress)
                    await budget.acquire(read_bytes)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    budget.release(read_bytes)
                    break
                except BaseException:
                    budget.release(read_bytes)
                    raise
                size = len(chunk)
                kept = min(size, read_bytes)  # a transport set to read more is still bounded
                budget.release(read_bytes - kept)
                received.held += kept
                received.body_bytes += size
                self.limiter.on_bytes(size)
                if self.bandwidth is not None:
                    await self.bandwidth.consume(size)
                received.batch.append(chunk)
                if received.held >= FEED_BATCH_BYTES:
                    await self._feed(target, received, progress)

    async def _feed(self, target: _Target, received: _Received, progress: _Progress) -> None:
        """Hand the batch to the extractor in a thread, then give its bytes back to the budget."""
        await anyio.to_thread.run_sync(target.feed, received.take_batch(), limiter=self.extractors)
        await target.drain()
        self.budget.release(received.give_back())
        received.counted = self._count_progress(target, received.counted)
        progress.dicom_bytes = received.counted

    def _count_progress(self, target: _Target, counted: int) -> int:
        dicom_bytes = target.dicom_bytes
        self.stats.dicom_bytes += dicom_bytes - counted
        return dicom_bytes

    async def _publish(self, item: PlannedSeries, verified: VerifiedSeries, staging: Path) -> None:
        paths = self.paths
        assert paths is not None
        relative = paths.known(item.series_uid, item.metadata)
        if relative is None:
            relative = await anyio.to_thread.run_sync(paths.choose, item.series_uid, item.metadata)
        try:
            await self._publish_at(item, verified, staging, relative)
        finally:
            paths.release(relative)

    async def _publish_at(
        self, item: PlannedSeries, verified: VerifiedSeries, staging: Path, relative: PurePosixPath
    ) -> None:
        files = tuple(FileEntry(f.name, f.size, f.md5) for f in verified.files)
        metadata = json_safe_metadata(item.metadata)

        def record(status: Literal["verified", "done"]) -> SeriesRecord:
            return SeriesRecord(
                series_uid=item.series_uid,
                status=status,
                at=self.clock.time(),
                run_id=self.run_id,
                path=relative.as_posix(),
                files=files,
                instance_count=verified.instance_count,
                dicom_bytes=verified.dicom_bytes,
                sop_class_uid=verified.sop_class_uid,
                reason=None,
                reference=None,
                attempts=None,
                metadata=metadata,
            )

        publish = self.destination.replace if item.series_uid in self.damaged else self.destination.publish
        # verified record durable -> rename into place -> done record durable, shared with every
        # series that finished meanwhile (one thread hop, two fsyncs for the whole group).
        await self.publisher.publish(
            record("verified"), record("done"), publish, staging, PurePosixPath(relative)
        )
        self.stats.done_series += 1
        self.stats.done_bytes += verified.dicom_bytes
        self.stats.archive_bytes += verified.archive_bytes
        self._emit(RunEvent("done", item.series_uid, relative.as_posix()))

    # -- failure handling ------------------------------------------------------------------------

    def _set_aside(self, exc: InsufficientSpaceError) -> bool:
        """A series too large for the free space: nothing was requested or written for it."""
        if not self.set_aside_unfit:
            raise DiskFullError(exc.message, series_uid=exc.series_uid) from exc
        self.unfit.append(exc)
        self._emit(RunEvent("warning", exc.series_uid or "", exc.describe()))
        return False

    def _fall_back_for_md5(self, exc: TciaFetchError) -> bool:
        """Switch the run to getImageWithMD5Hash when getImage refuses ``IncludeMD5``.

        reference/nbia-api.md marks ``IncludeMD5`` UNCERTAIN in production; a server without it
        answers 400 "Invalid query parameter". Without this switch every series would fail.
        """
        refused = isinstance(exc, InvalidParameterError) and "IncludeMD5" in exc.body_excerpt
        if not (refused and self.job.verify_md5):
            return False
        if not self.md5_via_legacy_endpoint:  # several workers may learn it at the same moment
            self.md5_via_legacy_endpoint = True
            self._emit(RunEvent("retry", "", "server refuses IncludeMD5; using getImageWithMD5Hash"))
        return True

    def _signal(self, exc: TciaFetchError, slot: Slot) -> None:
        """Tell the pacer and the limiter what a failed download says, while it holds its slot."""
        if isinstance(exc, RateLimitedError):
            self.pacer.on_throttle(exc.retry_after_s)
            slot.congestion("throttle")
        elif isinstance(exc, (StallError, RequestTimeoutError)):
            slot.congestion("timeout")
        elif (
            exc.retryable and not isinstance(exc, IntegrityError) and not self._fall_back_for_md5_pending(exc)
        ):
            slot.congestion("transient")

    def _fall_back_for_md5_pending(self, exc: TciaFetchError) -> bool:
        return isinstance(exc, InvalidParameterError) and "IncludeMD5" in exc.body_excerpt

    def _feedback(self, series_uid: str, exc: TciaFetchError) -> None:
        """Tell the run's figures and the breaker what this failure says about the server."""
        if isinstance(exc, RateLimitedError):
            self.stats.throttled += 1
        self.breaker.on_failure(series_uid, exc)

    async def _refresh_expectation(
        self, item: PlannedSeries, current: SeriesExpectation
    ) -> SeriesExpectation:
        try:
            sized = await self.source.series_size(item.series_uid)
        except TciaFetchError as exc:
            if exc.fatal:
                raise
            return current
        if sized is None or sized.object_count <= 0:
            return current
        return SeriesExpectation(item.series_uid, sized.object_count, sized.total_size_bytes)

    async def _record_failure(self, item: PlannedSeries, exc: TciaFetchError, attempts: int) -> None:
        failure = SeriesFailedError(
            f"gave up after {attempts} attempt(s): {exc.describe()}",
            series_uid=item.series_uid,
            attempts=attempts,
            cause=exc,
        )
        record = SeriesRecord(
            series_uid=item.series_uid,
            status="failed",
            at=self.clock.time(),
            run_id=self.run_id,
            path=None,
            files=(),
            instance_count=None,
            dicom_bytes=None,
            sop_class_uid=None,
            reason=exc.message,
            reference=exc.reference,
            attempts=attempts,
            metadata=json_safe_metadata(item.metadata),
        )
        with anyio.CancelScope(shield=True):
            await self._append(record)
        self.failures.append(
            SeriesFailure(item.series_uid, str(exc.message), exc.reference, attempts, item.origin)
        )
        self.stats.failed_series += 1
        self._emit(RunEvent("failed", item.series_uid, failure.message))

    async def _append(self, record: SeriesRecord) -> None:
        await self.commit.append(record)

    def _emit(self, event: RunEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


class _Received:
    """One download's body between the network and the extractor.

    ``batch`` is what was read but not yet handed to the extractor, ``held`` the budget bytes it
    holds, ``counted`` the DICOM bytes already added to the run's progress, ``body_bytes`` the
    whole body so far (what the limiter credits the download with).
    """

    __slots__ = ("batch", "body_bytes", "counted", "held")

    def __init__(self) -> None:
        self.batch: list[bytes] = []
        self.held = 0
        self.counted = 0
        self.body_bytes = 0

    def take_batch(self) -> list[bytes]:
        batch, self.batch = self.batch, []
        return batch

    def give_back(self) -> int:
        """The budget bytes held, now owed back to the budget (zero afterwards)."""
        held, self.held = self.held, 0
        return held


class _Target:
    """Where one attempt's bytes go: a staging directory and its extractor, made on first use.

    Every method except :meth:`close` and the property runs in a worker thread (they create,
    write and remove files); the worker calls them one at a time.
    """

    def __init__(
        self,
        destination: SeriesHome,
        series_uid: str,
        expectation: SeriesExpectation,
        job: SeriesJob,
        metadata: Mapping[str, object] | None = None,
        paths: SeriesPaths | None = None,
    ) -> None:
        self._destination = destination
        self._paths = paths
        self._series_uid = series_uid
        self._expectation = expectation
        self._job = job
        self._metadata = metadata
        self.staging: Path | None = None
        self._extractor: SeriesExtractor | None = None
        #: A bucket home: the archive's streamed upload (see BucketDestination.stream_archive).
        self.stream: StreamedArchive | None = None

    @property
    def dicom_bytes(self) -> int:
        return 0 if self._extractor is None else self._extractor.dicom_bytes

    def _open(self) -> SeriesExtractor:
        if self._extractor is None:
            self.staging = self._destination.new_staging(self._series_uid)
            job = self._job
            stream_archive = getattr(self._destination, "stream_archive", None)
            if stream_archive is not None and job.keep != "dicom" and self._metadata is not None:
                name = archive_name(self._series_uid, job.keep)
                # The key the series will be published under: a bucket path is never disambiguated
                # (keys end with the UID), so choosing now is choosing what publishing will use.
                paths = self._paths or SeriesPaths(job.layout, self._destination)
                relative = paths.choose(self._series_uid, self._metadata)
                self.stream = stream_archive(self.staging, relative, name)
            self._extractor = SeriesExtractor(
                self._expectation,
                self.staging,
                keep=job.keep,
                require_md5=job.verify_md5,
                fsync=job.fsync,
                archive_sink=self.stream.write if self.stream is not None else None,
            )
        return self._extractor

    async def drain(self) -> None:
        """Upload the full parts the last feed produced (a bucket home; on the event loop)."""
        if self.stream is not None:
            await self.stream.drain()

    async def seal(self) -> None:
        """After verification: upload the last part, so that publishing is one short request."""
        if self.stream is not None:
            await self.stream.seal()

    def feed(self, chunks: list[bytes]) -> None:
        extractor = self._open()
        for chunk in chunks:
            extractor.feed(chunk)

    def feed_and_finish(self, chunks: list[bytes]) -> VerifiedSeries:
        self.feed(chunks)
        return self._open().finish()

    def discard(self) -> None:
        """Close and drop the extractor, and remove the staging directory (after a failure)."""
        self.close()
        if self.staging is not None:
            self._destination.discard(self.staging)

    def close(self) -> None:
        extractor, self._extractor = self._extractor, None
        if extractor is not None:
            extractor.close()


def _drop_tracebacks(exc: BaseException) -> None:
    """Clear the tracebacks of ``exc`` and its causes: they pin the failed attempt's frames."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
