"""The one module that talks to an S3-compatible object store (the only importer of aiobotocore).

Why aiobotocore and not obstore: obstore (0.12.1, the newest on PyPI) still has no way to list
or abort multipart uploads (object_store's ``MultipartStore`` is not exposed, and ``put`` hides
the upload id), so a rerun could not abort the uploads a SIGKILLed run left open, which the
destination contract requires; nor does it read ``~/.aws`` profiles. aiobotocore is botocore
(the same request signing, credential chain and error codes the moto server in the tests
speaks) on aiohttp, so every S3 request is a coroutine on the run's event loop: no thread per
request, one connection pool.

Two faces:

* :class:`ObjectStore` is the async client. The series data path uses it directly: an archive is
  written into a :class:`StreamedObject` (a multipart upload filled part by part while the series
  downloads and verifies) from the worker's coroutine.
* :class:`BlockingObjectStore` is the same operations for synchronous callers in worker threads
  (the journal's :class:`~tcia_fetch.store.statestore.StateStorage`, the bucket lock,
  reconciliation) and for the CLI (``status``, ``verify``). It submits each coroutine to an anyio
  :class:`~anyio.from_thread.BlockingPortal`: during a run, a portal on the run's own event loop (so
  the client is shared with the data path); elsewhere, a portal on a private event-loop thread it
  starts and stops itself. Either way the thread waits; the I/O is async.

Credentials, region and endpoint come only from the standard AWS chain: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/{config,credentials}``
(botocore), ``AWS_REGION`` (filled in here: botocore reads only ``AWS_DEFAULT_REGION``) and
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (MinIO, Ceph; path-style addressing then).
Nothing is ever taken from the command line, and no message built here contains a credential:
errors carry the S3 error *code*, the HTTP status, the action and the key, never the server's
message text (which may echo the access key id).

Errors: refused or missing credentials -> :class:`ObjectStoreAuthError` (fatal, exit 3); no such
bucket -> :class:`BucketMissingError` (fatal, exit 3); 503 SlowDown, 500, cut connections and
timeouts are retried here under the shared :class:`RetryPolicy` (each multipart part on its own),
and when the policy gives up they end the run as a :class:`DestinationError` (the destination is
unusable: re-downloading from TCIA would not help).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import random
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from tcia_fetch.engine.retry import RetryPolicy, RetryState
from tcia_fetch.errors import (
    BucketMissingError,
    DestinationError,
    ObjectStoreAuthError,
    ObjectStoreError,
    ObjectStoreThrottledError,
    StorageError,
    TciaFetchError,
)

if TYPE_CHECKING:
    from tcia_fetch.store.location import BucketLocation

__all__ = [
    "BlockingObjectStore",
    "LoopCaller",
    "ObjectInfo",
    "ObjectStore",
    "OpenUpload",
    "StreamedObject",
    "ThisLoop",
    "open_object_store",
]

T = TypeVar("T")

#: Whole files (state snapshots, metadata.csv) up to this size go up in one PUT; larger ones by
#: multipart in parts of this size.
PART_BYTES: Final = 16 << 20
#: Parts of a streamed series archive: S3's minimum part size is 5 MiB; 8 MiB keeps what a
#: series in flight holds small (one part filling, plus at most a feed batch) and still allows
#: 80 GB per object within S3's 10,000 parts.
STREAM_PART_BYTES: Final = 8 << 20
#: A streamed archive buffering more than this many parts (a huge tar member compressed in one
#: go) uploads from the writing thread itself rather than grow further.
_MAX_BUFFERED_PARTS: Final = 3
_READ_BLOCK: Final = 1 << 20
#: Thread hops made BY a coroutine that a worker thread is waiting for (reading a file or a
#: snapshot's chunks for an upload) take tokens from here, not from anyio's default limiter:
#: those waiting threads hold default tokens, and the hop must never wait for one of them.
_NESTED_THREADS: Final = 4
_AUTH_CODES: Final = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
_MISSING_KEY_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_EXISTS_CODES: Final = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float


@dataclass(frozen=True, slots=True)
class OpenUpload:
    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a client is made of, resolved from the AWS chain (in a thread: it reads ~/.aws)."""

    region: str
    endpoint: str | None
    part_bytes: int
    stream_part_bytes: int


def _resolve_settings(env: Mapping[str, str]) -> tuple[Any, _Settings]:
    try:
        from aiobotocore.session import get_session
    except ImportError as exc:  # pragma: no cover - the extra is part of `test`
        raise DestinationError(
            "s3:// destinations need the optional dependency aiobotocore: pip install 'tcia-fetch[s3]'"
        ) from exc
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    session = get_session()
    region = (
        env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or session.get_config_variable("region")
        or "us-east-1"
    )
    # Load the S3 service model now, in this thread: botocore reads it from disk on first use,
    # which would otherwise block the event loop when the client is created.
    # Everything botocore reads from disk when a client is made, read here (cached in the session):
    # the event loop must not wait for a file.
    loader = session.get_component("data_loader")
    version = loader.determine_latest_version("s3", "service-2")
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        for api_version in (None, version):  # cached per arguments, spelled as botocore spells them
            with contextlib.suppress(Exception):
                loader.load_service_model("s3", kind, api_version=api_version)
            with contextlib.suppress(Exception):
                loader.load_service_model("s3", type_name=kind, api_version=api_version)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        with contextlib.suppress(Exception):
            loader.load_data(name)
    session.get_scoped_config()
    for component in ("default_config_resolver", "endpoint_resolver", "exceptions_factory"):
        with contextlib.suppress(Exception):
            session._get_internal_component(component)
    # TCIA_FETCH_S3_PART_BYTES: multipart part size (S3's minimum is 5 MiB; tests use less on moto).
    explicit = env.get("TCIA_FETCH_S3_PART_BYTES")
    part_bytes = int(explicit or PART_BYTES)
    stream_part_bytes = int(explicit or STREAM_PART_BYTES)
    if part_bytes < 1 or stream_part_bytes < 1:
        raise DestinationError(f"TCIA_FETCH_S3_PART_BYTES must be a positive size, got {explicit!r}")
    return session, _Settings(str(region), endpoint, part_bytes, stream_part_bytes)


class ObjectStore:
    """Async, retried, error-translated S3 operations on one bucket (one event loop)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        policy: RetryPolicy,
        *,
        part_bytes: int = PART_BYTES,
        stream_part_bytes: int = STREAM_PART_BYTES,
        closer: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.part_bytes = part_bytes
        self.stream_part_bytes = stream_part_bytes
        self._policy = policy
        self._rng = random.Random()
        self._closer = closer

    @classmethod
    async def connect(
        cls,
        location: BucketLocation,
        *,
        policy: RetryPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ObjectStore:
        """A client for ``location``'s bucket on the current event loop, from the AWS chain only."""
        from aiobotocore.config import AioConfig

        environment = dict(os.environ if env is None else env)
        session, settings = await anyio.to_thread.run_sync(_resolve_settings, environment)
        config = AioConfig(
            region_name=settings.region,
            retries={"total_max_attempts": 1, "mode": "standard"},  # retries are ours (shared policy)
            connect_timeout=20,
            read_timeout=120,
            max_pool_connections=64,
            s3={"addressing_style": "path" if settings.endpoint else "auto"},
            user_agent_extra="tcia-fetch",
        )
        creator = session.create_client("s3", endpoint_url=settings.endpoint, config=config)
        client = await creator.__aenter__()

        async def close() -> None:
            await creator.__aexit__(None, None, None)

        return cls(
            client,
            location.bucket,
            policy or RetryPolicy(),
            part_bytes=settings.part_bytes,
            stream_part_bytes=settings.stream_part_bytes,
            closer=close,
        )

    @property
    def region(self) -> str:
        return str(self._client.meta.region_name)

    async def aclose(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None:
            await closer()

    # --- the bucket ------------------------------------------------------------------------------

    async def check_bucket(self) -> None:
        """Prove the bucket exists and the credentials work (before any download)."""
        await self._call("open bucket", "", lambda: self._client.head_bucket(Bucket=self.bucket))

    # --- objects ---------------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = await self._call(
                "inspect", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key)
            )
        except _MissingError:
            return None
        return ObjectInfo(key, int(answer["ContentLength"]), str(answer.get("ETag", "")), _stamp(answer))

    async def get(self, key: str) -> bytes | None:
        async def fetch() -> bytes:
            answer = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with answer["Body"] as body:
                return bytes(await body.read())

        try:
            return await self._call("read", key, fetch)
        except _MissingError:
            return None

    async def iter_blocks(self, key: str) -> AsyncIterator[bytes] | None:
        """The object's bytes in blocks (one GET, not retried mid-stream: verify re-runs it)."""
        try:
            answer = await self._call(
                "read", key, lambda: self._client.get_object(Bucket=self.bucket, Key=key)
            )
        except _MissingError:
            return None
        return self._blocks(key, answer["Body"])

    async def _blocks(self, key: str, body: Any) -> AsyncIterator[bytes]:
        async with body:
            while True:
                try:
                    block = await body.read(_READ_BLOCK)
                except Exception as exc:
                    raise self._translate(exc, "read", key) from exc
                if not block:
                    return
                yield bytes(block)

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """PUT a whole object (atomic). With ``if_absent``: False when the key already exists."""
        extra: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            await self._call(
                "write", key, lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
            )
        except _ExistsError:
            return False
        return True

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order (paged)."""
        found: builtins.list[ObjectInfo] = []
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                arguments["ContinuationToken"] = token
            listing = partial(self._client.list_objects_v2, **arguments)
            page: dict[str, Any] = await self._call("list", prefix, listing)
            for item in page.get("Contents", ()):
                found.append(
                    ObjectInfo(str(item["Key"]), int(item["Size"]), str(item.get("ETag", "")), _stamp(item))
                )
            if not page.get("IsTruncated"):
                return found
            token = page.get("NextContinuationToken")

    # --- uploads ---------------------------------------------------------------------------------

    def stream(self, key: str, *, part_bytes: int | None = None) -> StreamedObject:
        """A :class:`StreamedObject` for ``key``: bytes in, parts out, visible only on commit."""
        return StreamedObject(self, key, part_bytes or self.stream_part_bytes)

    async def upload_file(self, key: str, path: Path) -> str:
        """Upload a local file to ``key``; the key appears whole or not at all. Returns the ETag.

        The file is read in parts in a worker thread; the requests are this loop's.
        """
        stream = self.stream(key, part_bytes=self.part_bytes)
        try:
            limiter = _nested_limiter()
            source = await anyio.to_thread.run_sync(path.open, "rb", limiter=limiter)
            try:
                while chunk := await anyio.to_thread.run_sync(source.read, self.part_bytes, limiter=limiter):
                    stream.write(chunk)
                    await stream.drain()
            finally:
                await anyio.to_thread.run_sync(source.close, limiter=limiter)
            return await stream.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.abort()
            raise

    async def upload_chunks(self, key: str, chunks: Iterator[bytes]) -> str:
        """Like :meth:`upload_file`, from a synchronous iterator (produced in a worker thread)."""
        stream = self.stream(key, part_bytes=self.part_bytes)
        done = object()
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, chunks, done, limiter=_nested_limiter())
                if chunk is done:
                    break
                assert isinstance(chunk, (bytes, bytearray, memoryview))
                stream.write(chunk)
                await stream.drain()
            return await stream.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.abort()
            raise

    async def start_upload(self, key: str) -> str:
        created = await self._call(
            "start upload", key, lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        return str(created["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        answer = await self._call(
            f"upload part {number} of",
            key,
            lambda: self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            ),
        )
        return str(answer["ETag"])

    async def complete_upload(self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]) -> str:
        listing = {"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]}
        done = await self._call(
            "complete upload",
            key,
            lambda: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=listing
            ),
        )
        return str(done.get("ETag", ""))

    async def put_object(self, key: str, data: bytes) -> str:
        answer = await self._call(
            "upload", key, lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        )
        return str(answer.get("ETag", ""))

    async def open_uploads(self, prefix: str) -> builtins.list[OpenUpload]:
        """Multipart uploads under ``prefix`` that were started and never completed or aborted."""
        found: builtins.list[OpenUpload] = []
        markers: dict[str, str] = {}
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, **markers}
            page: dict[str, Any] = await self._call(
                "list uploads", prefix, partial(self._client.list_multipart_uploads, **arguments)
            )
            for item in page.get("Uploads", ()):
                initiated = item.get("Initiated")
                stamp = initiated.timestamp() if hasattr(initiated, "timestamp") else 0.0
                found.append(OpenUpload(str(item["Key"]), str(item["UploadId"]), stamp))
            if not page.get("IsTruncated"):
                return found
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._call(
                "abort upload",
                key,
                lambda: self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id),
            )
        except _MissingError:
            return

    async def abort_quietly(self, key: str, upload_id: str) -> None:
        # Best effort, one try: whatever stays open is aborted by the next run's cleanup.
        with contextlib.suppress(Exception):
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    # --- retries and errors ----------------------------------------------------------------------

    async def _call(self, action: str, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` retried under the shared policy; errors translated into errors.py classes."""
        state = RetryState(self._policy, self._rng)
        while True:
            try:
                return await fn()
            except Exception as exc:
                error = self._translate(exc, action, key)
                if isinstance(error, (_MissingError, _ExistsError)) or not error.retryable:
                    raise error from exc
                delay = state.next_delay(error)
                if delay is None:
                    raise DestinationError(
                        f"gave up on the object store after {state.attempts_made} attempt(s): {error.message}"
                    ) from exc
                await anyio.sleep(delay)

    def _translate(self, exc: BaseException, action: str, key: str) -> TciaFetchError:
        from botocore import exceptions as boto

        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        if isinstance(exc, TciaFetchError):
            return exc
        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return ObjectStoreAuthError(
                f"cannot {action} {where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or ~/.aws/credentials)"
            )
        if isinstance(exc, boto.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            text = f"cannot {action} {where}: {code or 'error'} (HTTP {status})"
            if code in _AUTH_CODES or status in (401, 403):
                return ObjectStoreAuthError(
                    f"{text}: the object store refused the credentials or denied access "
                    "(check AWS_PROFILE / AWS_ACCESS_KEY_ID and the bucket policy)"
                )
            if code == "NoSuchBucket" or (status == 404 and not key):
                return BucketMissingError(f"{text}: the bucket {self.bucket!r} does not exist")
            if code in _MISSING_KEY_CODES or code == "NoSuchUpload" or status == 404:
                return _MissingError(text)
            if code in _EXISTS_CODES or status == 412:
                return _ExistsError(text)
            if code == "SlowDown" or status == 503:
                return ObjectStoreThrottledError(text)
            if status >= 500 or code in ("InternalError", "RequestTimeout"):
                return ObjectStoreError(text)
            return DestinationError(text)
        transient = (
            boto.ConnectionError,
            boto.HTTPClientError,
            boto.ReadTimeoutError,
            boto.ConnectTimeoutError,
            boto.IncompleteReadError,
            boto.ResponseStreamingError,
        )
        if isinstance(exc, transient):
            return ObjectStoreError(f"cannot {action} {where}: {type(exc).__name__}")
        if isinstance(exc, (OSError, TimeoutError)):
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            return ObjectStoreError(f"cannot {action} {where}: {reason}")
        # aiohttp's own errors (a body cut mid-read) reach us unwrapped on some paths; aiohttp is
        # imported by transport.py alone, so they are recognised by their module, not their class.
        if type(exc).__module__.split(".")[0] == "aiohttp":
            return ObjectStoreError(f"cannot {action} {where}: {type(exc).__name__}")
        return DestinationError(f"cannot {action} {where}: {type(exc).__name__}")


_LIMITERS: weakref.WeakKeyDictionary[object, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _nested_limiter() -> anyio.CapacityLimiter:
    """The nested-hop limiter of the current event loop (one per loop: limiters are loop-bound)."""
    token = anyio.lowlevel.current_token()
    key = token.native_token
    limiter = _LIMITERS.get(key)
    if limiter is None:
        limiter = _LIMITERS[key] = anyio.CapacityLimiter(_NESTED_THREADS)
    return limiter


class StreamedObject:
    """An object written as its bytes are produced: a multipart upload completed by :meth:`commit`.

    :meth:`write` only buffers (it is called by the extractor in a worker thread); :meth:`drain`
    (on the event loop, between writes) uploads every full part; :meth:`commit` uploads the rest
    and completes the upload, the one moment the key becomes visible. An object that never
    filled a part is one PUT at commit. :meth:`abort` aborts; a SIGKILL leaves the upload open,
    invisible, for the next run's cleanup. Memory: the part filling, plus what one write added,
    with a backstop (see :data:`_MAX_BUFFERED_PARTS`) when a single write is huge.
    """

    def __init__(self, store: ObjectStore, key: str, part_bytes: int) -> None:
        self.store = store
        self.key = key
        self.part_bytes = part_bytes
        self.size = 0
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str]] = []
        self._finished = False
        #: Set by the bucket destination: uploads from a worker thread when the buffer overflows.
        self.overflow: Callable[[], None] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def upload_id(self) -> str | None:
        return self._upload_id

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise DestinationError(f"s3://{self.store.bucket}/{self.key}: written after commit or abort")
        self._buffer += data
        self.size += memoryview(data).nbytes
        if self.overflow is not None and len(self._buffer) >= _MAX_BUFFERED_PARTS * self.part_bytes:
            self.overflow()

    async def drain(self) -> None:
        """Upload every full part buffered so far (the first one starts the multipart upload)."""
        while len(self._buffer) >= self.part_bytes and not self._finished:
            await self._send(bytes(self._buffer[: self.part_bytes]))
            del self._buffer[: self.part_bytes]

    async def _send(self, body: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = await self.store.start_upload(self.key)
        number = len(self._parts) + 1
        etag = await self.store.upload_part(self.key, self._upload_id, number, body)
        self._parts.append((number, etag))

    async def seal(self) -> None:
        """Upload what remains as the last part, so that :meth:`commit` is one short request.

        A small object (no part uploaded yet) stays in memory for one PUT at commit.
        """
        await self.drain()
        if self._upload_id is not None and self._buffer:
            await self._send(bytes(self._buffer))
            self._buffer.clear()

    async def commit(self) -> str:
        """Make the object visible (complete the upload, or PUT a small one); returns the ETag."""
        await self.seal()
        if self._upload_id is None:
            etag = await self.store.put_object(self.key, bytes(self._buffer))
        else:
            try:
                etag = await self.store.complete_upload(self.key, self._upload_id, self._parts)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.store.abort_quietly(self.key, self._upload_id)
                self._upload_id = None
                raise
        self._finished = True
        self._buffer = bytearray()
        return etag

    async def abort(self) -> None:
        """Give the object up: nothing becomes visible, the parts are freed. Idempotent."""
        self._finished = True
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            await self.store.abort_quietly(self.key, upload_id)


class LoopCaller(Protocol):
    """Runs a coroutine function on an event loop from another thread and waits for its result
    (anyio's :class:`~anyio.from_thread.BlockingPortal` is one; :class:`ThisLoop` another)."""

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T: ...


class ThisLoop:
    """A :class:`LoopCaller` into the event loop it was made on (make it there), for any thread.

    A run makes one on its own loop so that the bucket client, created and used there by the
    data path, is shared by the journal and the lock in worker threads. It needs no task group
    of its own (anyio's loop token), so it nests in no cancel scope of the run.
    """

    def __init__(self) -> None:
        self._token = anyio.lowlevel.current_token()
        #: The loop's thread: a call from it would wait for itself (the finalizer checks).
        self.thread = threading.get_ident()

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return anyio.from_thread.run(func, *args, token=self._token)  # type: ignore[arg-type]


class _LoopThread:
    """A private event loop in a daemon thread, for a store used outside any run (the CLI's
    ``status``/``verify``/``catalog``, tests). Daemon: a process that forgets to close
    its store still exits (a non-daemon loop thread would be joined forever at shutdown)."""

    def __init__(self) -> None:
        ready = threading.Event()
        self._stop: anyio.Event | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None

        async def serve() -> None:
            self._token = anyio.lowlevel.current_token()
            self._stop = anyio.Event()
            ready.set()
            await self._stop.wait()

        self._thread = threading.Thread(target=anyio.run, args=(serve,), name="tcia-fetch-s3", daemon=True)
        self._thread.start()
        ready.wait()

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return anyio.from_thread.run(func, *args, token=self._token)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            anyio.from_thread.run_sync(self._stop.set, token=self._token)
            self._thread.join()


class BlockingObjectStore:
    """:class:`ObjectStore` for synchronous callers (threads, the CLI), through a blocking portal.

    Never call it from the event loop thread that runs the portal (the call would wait for
    itself): in a run every caller is in a worker thread, as the filesystem code is.
    """

    def __init__(
        self, store: ObjectStore, portal: LoopCaller, *, stop_portal: Callable[[], None] | None
    ) -> None:
        self.aio = store
        self.portal = portal
        self.bucket = store.bucket
        self.part_bytes = store.part_bytes
        self._stop_portal = stop_portal
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_quietly, store, portal, stop_portal)

    @property
    def region(self) -> str:
        return self.aio.region

    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def close(self) -> None:
        """Close the client (and stop the private portal thread, if this store started one)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            self._run(self.aio.aclose)
        finally:
            if self._stop_portal is not None:
                self._stop_portal()

    def check_bucket(self) -> None:
        self._run(self.aio.check_bucket)

    def head(self, key: str) -> ObjectInfo | None:
        return self._run(self.aio.head, key)

    def get(self, key: str) -> bytes | None:
        return self._run(self.aio.get, key)

    def iter_blocks(self, key: str) -> Iterator[bytes] | None:
        """The object's bytes in blocks; each block is fetched on the loop as it is asked for."""
        blocks = self._run(self.aio.iter_blocks, key)
        if blocks is None:
            return None
        return self._pull(blocks)

    def _pull(self, blocks: AsyncIterator[bytes]) -> Iterator[bytes]:
        async def following() -> bytes | None:
            try:
                return await anext(blocks)
            except StopAsyncIteration:
                return None

        try:
            while (block := self._run(following)) is not None:
                yield block
        finally:
            closer = getattr(blocks, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    self._run(closer)

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        async def put() -> bool:
            return await self.aio.put(key, data, if_absent=if_absent)

        return self._run(put)

    def delete(self, key: str) -> None:
        self._run(self.aio.delete, key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._run(self.aio.list, prefix))

    def upload_file(self, key: str, path: Path) -> str:
        return self._run(self.aio.upload_file, key, path)

    def upload_chunks(self, key: str, chunks: Iterator[bytes]) -> str:
        return self._run(self.aio.upload_chunks, key, chunks)

    def open_uploads(self, prefix: str) -> builtins.list[OpenUpload]:
        return self._run(self.aio.open_uploads, prefix)

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._run(self.aio.abort_upload, key, upload_id)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run any coroutine function of the async side (a streamed object's commit, say)."""
        return self._run(fn, *args)


def _close_quietly(store: ObjectStore, portal: LoopCaller, stop: Callable[[], None] | None) -> None:
    """Finalizer: a store dropped without close() still closes its client and portal thread.

    Never on the loop's own thread: the call would wait for itself.
    """
    if getattr(portal, "thread", None) == threading.get_ident():
        return
    with contextlib.suppress(Exception):
        portal.call(store.aclose)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def open_object_store(
    location: BucketLocation,
    *,
    policy: RetryPolicy | None = None,
    env: Mapping[str, str] | None = None,
    portal: LoopCaller | None = None,
) -> BlockingObjectStore:
    """A client for ``location``'s bucket, configured from the AWS chain only.

    With ``portal`` (a run: :class:`ThisLoop` made on the run's event loop; call from a worker
    thread) the client lives on that loop. Without, a private event-loop thread is started for it and
    stopped by :meth:`BlockingObjectStore.close`.
    """
    stop: Callable[[], None] | None = None
    if portal is None:
        own = _LoopThread()
        portal, stop = own, own.stop

    async def connect() -> ObjectStore:
        return await ObjectStore.connect(location, policy=policy, env=env)

    try:
        store = portal.call(connect)
    except BaseException:
        if stop is not None:
            stop()
        raise
    return BlockingObjectStore(store, portal, stop_portal=stop)


class _MissingError(StorageError):
    """Internal: the key (or upload) does not exist. Never leaves this module."""

    fatal = False


class _ExistsError(StorageError):
    """Internal: a create-exclusive PUT found the key taken. Never leaves this module."""

    fatal = False


def _stamp(answer: Mapping[str, Any]) -> float:
    value: Any = answer.get("LastModified")
    return float(value.timestamp()) if value is not None and hasattr(value, "timestamp") else 0.0
