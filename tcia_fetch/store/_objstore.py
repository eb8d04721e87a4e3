"""The one module that talks to an S3-compatible object store (the only importer of boto3).

Why botocore (boto3) and not obstore: obstore 0.12 has no way to list or abort multipart
uploads (object_store's ``MultipartStore`` is not exposed, and ``put`` hides the upload id),
so a rerun could not abort the uploads a SIGKILLed run left open, which the destination contract
requires; nor does it read ``~/.aws`` profiles. botocore does both, and is what aiobotocore wraps.
Every call here is synchronous and runs in a worker thread (``anyio.to_thread``), exactly like the
filesystem calls of the local destination, so a sync client costs the event loop nothing.

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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

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

__all__ = ["ObjectInfo", "ObjectStore", "OpenUpload", "open_object_store"]

T = TypeVar("T")

#: Archives up to this size go up in one PUT; larger ones by multipart in parts of this size.
PART_BYTES: Final = 16 << 20
_READ_BLOCK: Final = 1 << 20
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


def open_object_store(
    location: BucketLocation,
    *,
    policy: RetryPolicy | None = None,
    env: Mapping[str, str] | None = None,
) -> ObjectStore:
    """A client for ``location``'s bucket, configured from the AWS chain only."""
    try:
        import boto3.session
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the extra is part of `test`
        raise DestinationError(
            "s3:// destinations need the optional dependency boto3: pip install 'tcia-fetch[s3]'"
        ) from exc
    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    session = boto3.session.Session()
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or session.region_name or "us-east-1"
    config = Config(
        region_name=region,
        retries={"total_max_attempts": 1, "mode": "standard"},  # retries are ours (shared policy)
        connect_timeout=20,
        read_timeout=120,
        max_pool_connections=64,
        s3={"addressing_style": "path" if endpoint else "auto"},
        user_agent_extra="tcia-fetch",
    )
    client = session.client("s3", endpoint_url=endpoint, config=config)
    # TCIA_FETCH_S3_PART_BYTES: multipart part size (S3's minimum is 5 MiB; tests use less on moto).
    part_bytes = int(env.get("TCIA_FETCH_S3_PART_BYTES") or PART_BYTES)
    return ObjectStore(client, location.bucket, policy or RetryPolicy(), part_bytes=part_bytes)


class ObjectStore:
    """Synchronous, retried, error-translated S3 operations on one bucket (call from threads)."""

    def __init__(
        self, client: Any, bucket: str, policy: RetryPolicy, *, part_bytes: int = PART_BYTES
    ) -> None:
        self._client = client
        self.part_bytes = part_bytes
        self.bucket = bucket
        self._policy = policy
        self._rng = random.Random()

    # --- the bucket ------------------------------------------------------------------------------

    def check_bucket(self) -> None:
        """Prove the bucket exists and the credentials work (before any download)."""
        self._call("open bucket", "", lambda: self._client.head_bucket(Bucket=self.bucket))

    # --- objects ---------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = self._call("inspect", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except _MissingError:
            return None
        return ObjectInfo(key, int(answer["ContentLength"]), str(answer.get("ETag", "")), _stamp(answer))

    def get(self, key: str) -> bytes | None:
        def fetch() -> bytes:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
            body = answer["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        try:
            return self._call("read", key, fetch)
        except _MissingError:
            return None

    def iter_blocks(self, key: str) -> Iterator[bytes] | None:
        """The object's bytes in blocks (one GET, not retried mid-stream: verify re-runs it)."""
        try:
            answer = self._call("read", key, lambda: self._client.get_object(Bucket=self.bucket, Key=key))
        except _MissingError:
            return None
        return self._blocks(key, answer["Body"])

    def _blocks(self, key: str, body: Any) -> Iterator[bytes]:
        try:
            while True:
                try:
                    block = body.read(_READ_BLOCK)
                except Exception as exc:
                    raise self._translate(exc, "read", key) from exc
                if not block:
                    return
                yield bytes(block)
        finally:
            body.close()

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """PUT a whole object (atomic). With ``if_absent``: False when the key already exists."""
        extra: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self._call(
                "write", key, lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
            )
        except _ExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order (paged)."""
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                arguments["ContinuationToken"] = token
            listing = partial(self._client.list_objects_v2, **arguments)
            page: dict[str, Any] = self._call("list", prefix, listing)
            for item in page.get("Contents", ()):
                yield ObjectInfo(str(item["Key"]), int(item["Size"]), str(item.get("ETag", "")), _stamp(item))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    # --- uploads ---------------------------------------------------------------------------------

    def upload_file(self, key: str, path: Path, *, part_bytes: int | None = None) -> str:
        """Upload a local file to ``key``; the key appears whole or not at all. Returns the ETag.

        Up to ``part_bytes``: one PUT. Larger: a multipart upload whose parts are retried one by
        one; CompleteMultipartUpload (retried too) is the moment the object appears. On failure
        the upload is aborted; a SIGKILL leaves it open for :meth:`abort_uploads` of the next run.
        """
        part_bytes = part_bytes or self.part_bytes
        size = path.stat().st_size
        if size <= part_bytes:
            data = path.read_bytes()
            answer = self._call(
                "upload", key, lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
            )
            return str(answer.get("ETag", ""))
        created = self._call(
            "start upload", key, lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        upload_id = str(created["UploadId"])
        try:
            parts: builtins.list[dict[str, Any]] = []
            with path.open("rb") as source:
                number = 0
                while chunk := source.read(part_bytes):
                    number += 1

                    def send(n: int = number, body: bytes = chunk) -> Any:
                        return self._client.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body
                        )

                    answer = self._call(f"upload part {number} of", key, send)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            done = self._call(
                "complete upload",
                key,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            self._abort_quietly(key, upload_id)
            raise
        return str(done.get("ETag", ""))

    def open_uploads(self, prefix: str) -> builtins.list[OpenUpload]:
        """Multipart uploads under ``prefix`` that were started and never completed or aborted."""
        found: builtins.list[OpenUpload] = []
        markers: dict[str, str] = {}
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, **markers}
            page: dict[str, Any] = self._call(
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

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                "abort upload",
                key,
                lambda: self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id),
            )
        except _MissingError:
            return

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        # Best effort: whatever stays open is aborted by the next run's cleanup.
        with contextlib.suppress(Exception):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    # --- retries and errors ----------------------------------------------------------------------

    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` retried under the shared policy; errors translated into errors.py classes."""
        state = RetryState(self._policy, self._rng)
        while True:
            try:
                return fn()
            except Exception as exc:
                error = self._translate(exc, action, key)
                if isinstance(error, (_MissingError, _ExistsError)) or not error.retryable:
                    raise error from exc
                delay = state.next_delay(error)
                if delay is None:
                    raise DestinationError(
                        f"gave up on the object store after {state.attempts_made} attempt(s): {error.message}"
                    ) from exc
                time.sleep(delay)

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
        if isinstance(exc, OSError):
            return ObjectStoreError(f"cannot {action} {where}: {exc.strerror or type(exc).__name__}")
        return DestinationError(f"cannot {action} {where}: {type(exc).__name__}")


class _MissingError(StorageError):
    """Internal: the key (or upload) does not exist. Never leaves this module."""

    fatal = False


class _ExistsError(StorageError):
    """Internal: a create-exclusive PUT found the key taken. Never leaves this module."""

    fatal = False


def _stamp(answer: Mapping[str, Any]) -> float:
    value: Any = answer.get("LastModified")
    return float(value.timestamp()) if value is not None and hasattr(value, "timestamp") else 0.0
