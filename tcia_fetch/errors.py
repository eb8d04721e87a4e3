"""The whole tcia-fetch exception tree, with retry semantics carried as data.

Retry logic, the circuit breaker and the exit-code mapping read the class attributes below
(``retryable``, ``fatal``, ``throttle``, ``exit_code``) and the instance attributes
(``retry_after_s``, ``series_uid``, ``url``); they never look at message text. Every message
names what failed and where (series UID, redacted URL, file and line), so that a line in a
batch log is enough to act on.

::

    TciaFetchError                      retryable=False fatal=False exit_code=1
    ├── InputError (ValueError)         bad job file, manifest, CSV, option; before any I/O; exit 2
    ├── TransportError                  the request did not complete; retryable
    │   ├── ConnectError                connection refused / reset before a response
    │   │   ├── NameResolutionError     DNS lookup failed
    │   │   └── ServerUnreachableError  the circuit breaker gave up after max outage; fatal
    │   ├── TLSError                    certificate verification failed; fatal, never retried
    │   ├── RequestTimeoutError         connect or first-byte deadline passed
    │   ├── StallError                  stream live but no bytes for stall_timeout_s
    │   ├── RemoteProtocolError         body cut mid-stream, bad chunking, peer closed early
    │   └── RedirectError               a redirect that cannot be followed (bad Location, loop); not retried
    │       └── RedirectRefusedError    a cross-origin or https->http redirect refused by policy; not retried
    ├── HTTPStatusError                 a response with an error status; .status, .body_excerpt
    │   ├── RateLimitedError            429 and 503; retryable, throttle; .retry_after_s
    │   ├── ServerError                 other 5xx; retryable
    │   ├── UnauthorizedError           401; fatal (legacy API refreshes the token once first)
    │   └── RequestRejectedError        other 4xx; not retryable
    │       ├── SeriesUnavailableError  400 "not been granted the access": unknown or restricted
    │       └── InvalidParameterError   400 "Invalid query parameter": a client/server mismatch
    ├── ResponseFormatError             a 2xx body that is not what the endpoint sends; retryable
    ├── BodyTooLargeError               a body past its ceiling, or inflating past a sane ratio; not retried
    ├── IntegrityError                  downloaded bytes disagree with the server's figures; retryable
    │   ├── NotAnArchiveError           HTML page, JSON or empty body where a zip was due
    │   ├── ArchiveCorruptError         truncated archive, bad CRC, broken structure
    │   ├── ArchiveTooLargeError        archive grew past what the server promised (bomb cut-off)
    │   ├── UnsafeArchiveError          ../ or absolute names, links, duplicates, encryption; not retried
    │   ├── CountMismatchError          instance count differs from the expected count
    │   ├── SizeMismatchError           DICOM byte total differs from TotalSizeInBytes
    │   └── ChecksumMismatchError       an MD5 differs, or the MD5 list is missing or inconsistent
    ├── MetadataError                   the server's own figures are missing or impossible; retryable
    │   └── ImplausibleFiguresError     counts/sizes beyond any real series; per series, not retried
    ├── StorageError (OSError)          the local destination; fatal
    │   ├── DiskFullError               ENOSPC / EDQUOT
    │   ├── DestinationError            missing, read-only or otherwise unusable destination
    │   │   └── FinalPathExistsError    a series' final path is taken by something else; per series
    │   ├── InsufficientSpaceError      a series' planned bytes exceed the free space; not started
    │   ├── DestinationBusyError        another live run owns the destination
    │   ├── ObjectStoreAuthError        the object store refused our credentials (or found none)
    │   └── BucketMissingError          the destination bucket does not exist
    ├── ObjectStoreError                an object-store request failed transiently (5xx, reset); retryable
    │   └── ObjectStoreThrottledError   503 SlowDown; retryable, throttle
    ├── JournalError                    the run journal cannot be read or written; fatal
    ├── MissingDependencyError (ImportError)  an optional extra is not installed; exit 2
    └── SeriesFailedError               a series given up on; recorded in the report, not raised out
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tcia_fetch.redaction import scrub

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "ArchiveCorruptError",
    "ArchiveTooLargeError",
    "BodyTooLargeError",
    "BucketMissingError",
    "ChecksumMismatchError",
    "ClusterError",
    "ConnectError",
    "CountMismatchError",
    "DestinationBusyError",
    "DestinationError",
    "DiskFullError",
    "FinalPathExistsError",
    "HTTPStatusError",
    "ImplausibleFiguresError",
    "InputError",
    "InsufficientSpaceError",
    "IntegrityError",
    "InvalidParameterError",
    "JournalError",
    "MetadataError",
    "MissingDependencyError",
    "NameResolutionError",
    "NotAnArchiveError",
    "ObjectStoreAuthError",
    "ObjectStoreError",
    "ObjectStoreThrottledError",
    "RateLimitedError",
    "RedirectError",
    "RedirectRefusedError",
    "RemoteProtocolError",
    "RequestRejectedError",
    "RequestTimeoutError",
    "ResponseFormatError",
    "SeriesFailedError",
    "SeriesUnavailableError",
    "ServerError",
    "ServerUnreachableError",
    "SizeMismatchError",
    "StallError",
    "StorageError",
    "TLSError",
    "TciaFetchError",
    "TransportError",
    "UnauthorizedError",
    "UnsafeArchiveError",
    "redact_url",
]

#: Process exit codes, documented in the README. ``run`` returns EXIT_OK only when every
#: planned series is verified on disk.
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 130

_SECRET_QUERY_KEYS = frozenset(
    {"password", "access_token", "refresh_token", "token", "client_secret", "api_key"}
)


#: Every secret query key holds one of these (lower case): a URL without any of them, without
#: user info and without percent-escapes (which could spell a key) has nothing to redact.
_SECRET_KEY_MARKERS = ("token", "password", "secret", "api_key")


def _plainly_secret_free(url: str) -> bool:
    """True when ``url`` visibly carries no credential (checked per request: kept cheap).

    ASCII only and without brackets: urlsplit refuses some such URLs (a bad IPv6 literal, a
    full-width at sign that NFKC turns into user info), and those take the full path.
    """
    if not url.isascii() or "@" in url or "%" in url or "[" in url or "]" in url:
        return False
    lowered = url.lower()
    return not any(marker in lowered for marker in _SECRET_KEY_MARKERS)


def redact_url(url: str) -> str:
    """Return ``url`` with user info and secret-bearing query values replaced by ``REDACTED``.

    Every URL that reaches a message, log line or report goes through here, so credentials
    given in a base URL (``https://user:pw@host/``) or a query string never leak.
    """
    if _plainly_secret_free(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(key, "REDACTED" if key.lower() in _SECRET_QUERY_KEYS else value) for key, value in pairs]
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class TciaFetchError(Exception):
    """Root of every error tcia-fetch raises on purpose.

    Class attributes describe what a caller should do; instance attributes say where.
    ``reference`` is a stable kebab-case tag for reports and for searching the docs.
    """

    retryable: ClassVar[bool] = False
    fatal: ClassVar[bool] = False
    throttle: ClassVar[bool] = False
    exit_code: ClassVar[int] = EXIT_SOME_FAILED
    reference: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        series_uid: str | None = None,
        url: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        # Messages often quote the server (an error body, a reason); a server that echoes our
        # credentials must not get them into a report or onto a terminal (redaction.py).
        message = scrub(message)
        self.message = message
        self.series_uid = series_uid
        self.url = redact_url(url) if url is not None else None
        self.retry_after_s = retry_after_s
        super().__init__(message)

    def __str__(self) -> str:
        context = []
        if self.series_uid:
            context.append(f"series {self.series_uid}")
        if self.url:
            context.append(self.url)
        text = f"{self.message} ({'; '.join(context)})" if context else self.message
        return scrub(text)

    def describe(self) -> str:
        """One line for reports: the reference tag and the message, without the context."""
        return scrub(f"{self.reference}: {self.message}")


class InputError(TciaFetchError, ValueError):
    """The user's input is wrong: a job file, manifest, CSV, UID or option.

    ``source`` names the file (or option) and ``location`` the line, key or column, so the
    message can say exactly what to fix. Raised before any network traffic.
    """

    exit_code = EXIT_BAD_INPUT
    fatal = True
    reference = "bad-input"

    def __init__(self, message: str, *, source: str | None = None, location: str | None = None) -> None:
        self.source = source
        self.location = location
        where = ":".join(part for part in (source, location) if part)
        super().__init__(f"{where}: {message}" if where else message)


# --- the wire --------------------------------------------------------------------------------


class TransportError(TciaFetchError):
    """The request did not complete at the network level; trying again may work."""

    retryable = True
    reference = "transport"


class ConnectError(TransportError):
    """No connection could be made (refused, reset, unreachable)."""

    reference = "connect-failed"


class NameResolutionError(ConnectError):
    """The server's host name could not be resolved."""

    reference = "dns-failed"


class ServerUnreachableError(ConnectError):
    """The server stayed unreachable longer than the run's outage limit. Ends the run."""

    retryable = False
    fatal = True
    exit_code = EXIT_FATAL
    reference = "server-unreachable"


class TLSError(TransportError):
    """TLS certificate verification failed. Never retried and never downgraded."""

    retryable = False
    fatal = True
    exit_code = EXIT_FATAL
    reference = "tls-failed"


class RequestTimeoutError(TransportError):
    """Connecting, or waiting for the response headers, took longer than allowed."""

    reference = "timeout"


class StallError(TransportError):
    """A response body stopped delivering bytes for longer than the stall timeout.

    A slow but live stream never raises this: only a gap with no bytes at all does.
    """

    reference = "stalled"


class RemoteProtocolError(TransportError):
    """The peer broke the HTTP exchange: closed mid-body, bad chunking, short read."""

    reference = "connection-cut"


class RedirectError(TransportError):
    """The server redirected somewhere that cannot be followed: a malformed or missing
    ``Location``, a scheme other than http(s), or too many hops.

    The server's fault, never the user's input: a per-series failure, never fatal to the job.
    Not retried: the same request meets the same broken redirect (a redirect is the server's
    considered answer, unlike a cut connection), and a series is retried on the next run.
    """

    retryable = False
    reference = "bad-redirect"


class RedirectRefusedError(RedirectError):
    """A redirect that the policy refuses: to another origin (unless allowed in the config), from
    https to http (always), or any redirect of a request carrying credentials (the token POST)."""

    reference = "redirect-refused"


# --- HTTP status -----------------------------------------------------------------------------


class HTTPStatusError(TciaFetchError):
    """The server answered with an error status. ``body_excerpt`` holds its first bytes."""

    reference = "http-error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body_excerpt: str = "",
        series_uid: str | None = None,
        url: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.body_excerpt = scrub(body_excerpt)
        super().__init__(message, series_uid=series_uid, url=url, retry_after_s=retry_after_s)


class RateLimitedError(HTTPStatusError):
    """429 or 503: the server asks us to slow down. Honour ``retry_after_s`` when set."""

    retryable = True
    throttle = True
    reference = "rate-limited"


class ServerError(HTTPStatusError):
    """A 5xx other than 503: the server failed; a later attempt may succeed."""

    retryable = True
    reference = "server-error"


class UnauthorizedError(HTTPStatusError):
    """401: the credentials were refused. Every later request would fail the same way."""

    fatal = True
    exit_code = EXIT_FATAL
    reference = "unauthorized"


class RequestRejectedError(HTTPStatusError):
    """A 4xx the server means: repeating the same request gives the same answer."""

    reference = "rejected"


class SeriesUnavailableError(RequestRejectedError):
    """The series does not exist or is not public: NBIA answers both with the same 400."""

    reference = "series-unavailable"


class InvalidParameterError(RequestRejectedError):
    """The server refused a query parameter (v4 allow-lists). A bug or an API change."""

    reference = "invalid-parameter"


class ResponseFormatError(TciaFetchError):
    """A successful status with a body the endpoint never sends (HTML, garbage, wrong shape)."""

    retryable = True
    reference = "bad-response"


class BodyTooLargeError(TciaFetchError):
    """A response body passed its ceiling, inflated past a plausible compression ratio, or held
    one row larger than any real row. The read stops there, so memory stays bounded.

    Not retried: a server that sends a decompression bomb or an endless body does it again,
    and each attempt would cost the full ceiling in time and bandwidth. Not fatal either: a
    planning query that fails this way fails the series it concerns and the run goes on.
    """

    reference = "body-too-large"


# --- integrity of a downloaded series --------------------------------------------------------


class IntegrityError(TciaFetchError):
    """What arrived disagrees with what the server promised. Re-downloading may fix it."""

    retryable = True
    reference = "integrity"


class NotAnArchiveError(IntegrityError):
    """The body is not a zip archive (an HTML error page, JSON, or nothing at all)."""

    reference = "not-an-archive"


class ArchiveCorruptError(IntegrityError):
    """The archive is truncated or damaged: a CRC, header or central directory is wrong."""

    reference = "archive-corrupt"


class ArchiveTooLargeError(IntegrityError):
    """The archive grew past what the server's own figures allow; cut off early."""

    reference = "archive-too-large"


class UnsafeArchiveError(IntegrityError):
    """A member could escape the destination or is not a plain file. Never extracted, not retried."""

    retryable = False
    reference = "unsafe-archive"


class CountMismatchError(IntegrityError):
    """The number of DICOM instances differs from the expected count."""

    reference = "count-mismatch"


class SizeMismatchError(IntegrityError):
    """The DICOM byte total differs from ``getSeriesSize``'s ``TotalSizeInBytes``."""

    reference = "size-mismatch"


class ChecksumMismatchError(IntegrityError):
    """A file's MD5 differs from ``md5hashes.csv``, or the list is missing or inconsistent."""

    reference = "md5-mismatch"


class MetadataError(TciaFetchError):
    """The server's own figures for a series are missing or impossible (no size, zero count)."""

    retryable = True
    reference = "metadata"


class ImplausibleFiguresError(MetadataError):
    """The server claims an instance count or byte total no real series comes near.

    Bad server data, never bad input: the series fails on its own (the rest of the job goes on)
    and is not retried, since asking again returns the same figures. The bounds and their
    source are in :mod:`tcia_fetch.series.plausible`.
    """

    retryable = False
    reference = "implausible-figures"


# --- local state -----------------------------------------------------------------------------


class StorageError(TciaFetchError, OSError):
    """The local destination failed us. Fatal: every series would fail the same way."""

    fatal = True
    exit_code = EXIT_FATAL
    reference = "storage"


class DiskFullError(StorageError):
    """No space (or quota) left on the destination's filesystem."""

    reference = "disk-full"


class DestinationError(StorageError):
    """The destination is missing, read-only, or not a directory we may write."""

    reference = "destination-unusable"


class FinalPathExistsError(DestinationError):
    """A series' final directory already exists; it is never overwritten or merged into.

    Not fatal for the run: the engine reports that series (another tool or run put something
    there) and goes on. Retrying cannot help.
    """

    fatal = False
    exit_code = EXIT_SOME_FAILED
    reference = "final-path-exists"


class InsufficientSpaceError(StorageError):
    """One series needs more room than its destination's filesystem has free, even alone.

    Checked before the series' first byte is requested (engine/space.py), so nothing is written.
    Not fatal by itself: the series is set aside and the rest of the job goes on (smaller series
    may still fit); the run then ends as a full disk does, exit 3, naming the series set aside
    (:func:`tcia_fetch.engine.space.space_refusal_error`). A rerun after freeing space fetches them.
    """

    fatal = False
    exit_code = EXIT_SOME_FAILED
    reference = "no-space-for-series"


class DestinationBusyError(StorageError):
    """Another live tcia-fetch run owns this destination."""

    reference = "destination-busy"


class ObjectStoreAuthError(StorageError):
    """The object store refused the credentials from the AWS chain, or there were none."""

    reference = "object-store-credentials"


class BucketMissingError(DestinationError):
    """The bucket named by an ``s3://`` destination does not exist (checked before any download)."""

    reference = "bucket-missing"


class ObjectStoreError(TciaFetchError):
    """An object-store request failed in a way a later attempt may not (5xx, cut connection)."""

    retryable = True
    reference = "object-store"


class ObjectStoreThrottledError(ObjectStoreError):
    """503 SlowDown: the store asks us to slow down."""

    throttle = True
    reference = "object-store-throttled"


class ClusterError(TciaFetchError):
    """The Dask cluster of a ``--scheduler`` run is unreachable or cannot do the job (fatal)."""

    fatal = True
    exit_code = EXIT_FATAL
    reference = "cluster"


class JournalError(TciaFetchError):
    """The run journal cannot be read or written."""

    fatal = True
    exit_code = EXIT_FATAL
    reference = "journal"


class SeriesFailedError(TciaFetchError):
    """A series given up on after its retry budget. Recorded in the report; the run goes on."""

    reference = "series-failed"

    def __init__(self, message: str, *, series_uid: str, attempts: int, cause: TciaFetchError) -> None:
        self.attempts = attempts
        self.cause = cause
        super().__init__(message, series_uid=series_uid)


class MissingDependencyError(TciaFetchError, ImportError):
    """A feature needs an optional extra that is not installed (``pip install 'tcia-fetch[X]'``).

    Also an ImportError, so code that guards an optional feature with ``except ImportError``
    keeps working. Raised before any network traffic, hence the bad-input exit code.
    """

    fatal = True
    exit_code = EXIT_BAD_INPUT
    reference = "missing-dependency"
