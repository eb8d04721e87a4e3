"""Fault injection for the fake server: which request misbehaves, how, and how many times.

A :class:`FaultPlan` holds explicit :class:`FaultRule` s plus an optional random component. Rules are
consulted in order; the first rule whose kind applies to the request, whose ``series_uid`` matches (None
matches any series) and which has firings left, fires and its counter goes down. ``times=None`` means
"every matching request". After its ``times`` firings a series behaves normally again, so a retrying
client must survive every retryable fault.

Download faults (getImage, getImageWithMD5Hash) are decided per request; WRONG_SIZE and SLOW_QUERY apply
to query endpoints (getSeriesSize, getSeries, getUpdatedSeries, getSeriesMetadata, ...); OUTAGE is a
window of time during which every API endpoint (queries and downloads; not the legacy token endpoint)
fails (:meth:`FaultState.outage`). The random
component draws, per download request, ``rng.random() < random_rate`` and then a kind uniformly from
``random_kinds`` (seeded: the same request sequence meets the same faults). Random faults use each
kind's default parameters and target the requested series.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BODY_FAULTS",
    "DOWNLOAD_FAULTS",
    "HOSTILE_SECRETS_FAULTS",
    "HOSTILE_TEXT",
    "OUTAGE_MODES",
    "QUERY_FAULTS",
    "ROW_FAULTS",
    "SERVER_FAULTS",
    "TOKEN_FAULTS",
    "FaultKind",
    "FaultPlan",
    "FaultRule",
    "FaultState",
]


class FaultKind(enum.Enum):
    """What a fault does (see each member's comment for its parameters and defaults)."""

    RATE_LIMIT = "RATE_LIMIT"  # 429 + Retry-After; retry_after: seconds (str/int/float) or HTTP-date ("1")
    SERVER_ERROR = "SERVER_ERROR"  # 500 "Server was not able to process your request\nnull"
    UNAVAILABLE = "UNAVAILABLE"  # 503; retry_after optional (None = no header)
    CUT = "CUT"  # connection closed after after_bytes body bytes (default 1000), chunked body unterminated
    STALL = "STALL"  # after_bytes (default 1000) sent, then silence for stall_s (default 30.0), then the rest
    SHORT_ZIP = "SHORT_ZIP"  # well-formed zip without the last `missing` (default 1) instances
    WRONG_MD5 = "WRONG_MD5"  # md5hashes.csv lists a wrong hash for one file
    FLIP_BYTE = "FLIP_BYTE"  # one byte flipped inside the first DICOM member's data: its CRC fails
    HTML_200 = "HTML_200"  # 200 text/html maintenance page
    EMPTY_200 = "EMPTY_200"  # 200 with an empty body
    WRONG_SIZE = "WRONG_SIZE"  # queries report size + delta_bytes (default 1000), count + delta_count (0)
    SLOW_QUERY = "SLOW_QUERY"  # query endpoints wait delay_s (default 2.0) before answering
    ZIP_SLIP = "ZIP_SLIP"  # one DICOM member renamed to `name` (default "../evil.dcm")
    REQUEST_REJECTED = "REQUEST_REJECTED"  # 400 "not been granted the access" text for a public series
    BAD_GATEWAY = "BAD_GATEWAY"  # 502 nginx "Bad Gateway" page (a proxy in front of a sick back end)
    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"  # 504 nginx "Gateway Time-out" page (zip built too slowly)
    TRUNCATE = "TRUNCATE"  # the body ends cleanly (terminating chunk sent) after after_bytes (1000) bytes
    RESET = "RESET"  # TCP RST (SO_LINGER 0) after after_bytes (default 1000) body bytes: ECONNRESET
    # 429 whose Retry-After is an HTTP-date: the response's Date header is the server clock (local
    # clock + clock_skew_s, default 0.0, whole seconds) and Retry-After is that Date + retry_in_s (2).
    RATE_LIMIT_DATE = "RATE_LIMIT_DATE"
    # The whole API is down for duration_s (default 5.0) from the first request after after_requests
    # (default 0) API requests: every query and download answers 503 (mode="503", the default) or has
    # its connection closed without a response (mode="close"). One window per rule; `times` unused.
    OUTAGE = "OUTAGE"
    # --- issue 14, archive hardening (md5 list, plausibility, free space) ---
    # getImage's md5hashes.csv holds the real rows followed by blank lines until it inflates to
    # inflated_bytes (default 1 GiB); a ~1 KiB deflate block is repeated, so serving it costs little.
    MD5_LIST_BOMB = "MD5_LIST_BOMB"
    # Query answers claim image_count instances (default 6,000,000; None keeps the real count) and
    # total_bytes bytes (default None: the real size) for the series, in every query endpoint.
    CLAIM_FIGURES = "CLAIM_FIGURES"
    # --- issue 14, bad rows / reserved names / path collisions (served by testing/_badrows.py) ---
    # getSeries, getUpdatedSeries and getSeriesMetadata answers gain one extra row per text in
    # `uids` (default: a path traversal, an empty UID, a 299-character UID and one holding an ANSI
    # escape), each a copy of the answer's first row with only SeriesInstanceUID changed.
    BAD_UID_ROWS = "BAD_UID_ROWS"
    # The rows of the targeted series (series_uid; None = every row) in the same answers carry
    # `value` in `column` (default ImageCount = "many", a row that does not fit; value None drops
    # the column). A collection named "metadata.csv" or a descriptive-path twin is played this way.
    ROW_VALUE = "ROW_VALUE"
    # --- issue 14, bounded bodies and redirects (helper "bodies"): hostile answers ---------------
    # The query endpoint `endpoint` (default getCollectionValues) answers 200 with `inflated_bytes`
    # (default 1 GiB) zero bytes, sent `encoding` "gzip" (the default: deflated on the fly, about 1 MB
    # per GiB on the wire) or "identity" (plain, chunked).
    QUERY_BOMB = "QUERY_BOMB"
    # The query endpoint `endpoint` (default getCollectionValues) answers 200 with a chunked body of
    # well-formed rows that never ends (JSON, or CSV for getSeriesMetadata).
    ENDLESS_BODY = "ENDLESS_BODY"
    # getImage / getImageWithMD5Hash answer `status` (default 302) with Location `location` (default
    # "http://[::1", malformed); point it at another listener for a cross-origin redirect.
    REDIRECT = "REDIRECT"
    # The legacy token endpoint answers `status` (default 307) with Location `location` (required in
    # practice: another origin that records what it receives).
    TOKEN_REDIRECT = "TOKEN_REDIRECT"
    # --- issue 14, hostile server: echoed secrets, throttle storm, terminal and spreadsheet text ---
    # The legacy token endpoint answers 500 with the url-encoded form it was posted (the password).
    ECHO_TOKEN = "ECHO_TOKEN"
    # A query answers 400 with the request headers it received, Authorization first.
    ECHO_HEADERS = "ECHO_HEADERS"
    # Every API request (scope="all": queries, downloads and the token endpoint; "downloads": the
    # download endpoints only) answers 429 with Retry-After: retry_after (default "1"). Forever with
    # times=None.
    THROTTLE_STORM = "THROTTLE_STORM"
    # Server text that means harm: `text` (default HOSTILE_TEXT: a spreadsheet formula, ANSI/OSC
    # escapes, BEL, a C1 CSI, a bidi override, rich markup) replaces SeriesDescription,
    # StudyDescription/StudyDesc, ProtocolName and Manufacturer in JSON query rows, and is added to
    # getCollectionValues as one more collection name.
    HOSTILE_NAMES = "HOSTILE_NAMES"
    # A download answers 400 with `text` (default HOSTILE_TEXT) as its error text.
    HOSTILE_ERROR = "HOSTILE_ERROR"


#: What HOSTILE_NAMES and HOSTILE_ERROR send by default (every kind of trouble in one string).
HOSTILE_TEXT = (
    '=HYPERLINK("http://evil.example/","open")\x1b[2J\x1b[31mred\x1b]0;owned\x07'
    "\x9b1m\u202etxt.exe [link=http://evil.example/]click[/link]"
)

QUERY_FAULTS = frozenset({FaultKind.WRONG_SIZE, FaultKind.SLOW_QUERY, FaultKind.CLAIM_FIGURES})
#: Faults that rewrite the rows of series answers (issue 14).
ROW_FAULTS = frozenset({FaultKind.BAD_UID_ROWS, FaultKind.ROW_VALUE})
#: Faults of the whole server rather than of one request kind.
SERVER_FAULTS = frozenset({FaultKind.OUTAGE})
#: issue 14 (bodies): whole-body faults of named query endpoints, and of the token endpoint.
BODY_FAULTS = frozenset({FaultKind.QUERY_BOMB, FaultKind.ENDLESS_BODY})
TOKEN_FAULTS = frozenset({FaultKind.TOKEN_REDIRECT})
#: Hostile modes consulted where their endpoint is served (testing/_hostile_secrets.py).
HOSTILE_SECRETS_FAULTS = frozenset(
    {FaultKind.ECHO_TOKEN, FaultKind.ECHO_HEADERS, FaultKind.THROTTLE_STORM, FaultKind.HOSTILE_NAMES}
)
DOWNLOAD_FAULTS = frozenset(
    set(FaultKind)
    - QUERY_FAULTS
    - SERVER_FAULTS
    - ROW_FAULTS
    - BODY_FAULTS
    - TOKEN_FAULTS
    - HOSTILE_SECRETS_FAULTS
)
OUTAGE_MODES = ("503", "close")

_DEFAULTS: Mapping[FaultKind, Mapping[str, object]] = {
    FaultKind.RATE_LIMIT: {"retry_after": "1"},
    FaultKind.SERVER_ERROR: {},
    FaultKind.UNAVAILABLE: {"retry_after": None},
    FaultKind.CUT: {"after_bytes": 1000},
    FaultKind.STALL: {"after_bytes": 1000, "stall_s": 30.0},
    FaultKind.SHORT_ZIP: {"missing": 1},
    FaultKind.WRONG_MD5: {},
    FaultKind.FLIP_BYTE: {},
    FaultKind.HTML_200: {},
    FaultKind.EMPTY_200: {},
    FaultKind.WRONG_SIZE: {"delta_bytes": 1000, "delta_count": 0},
    FaultKind.SLOW_QUERY: {"delay_s": 2.0},
    FaultKind.ZIP_SLIP: {"name": "../evil.dcm"},
    FaultKind.REQUEST_REJECTED: {},
    FaultKind.BAD_GATEWAY: {},
    FaultKind.GATEWAY_TIMEOUT: {},
    FaultKind.TRUNCATE: {"after_bytes": 1000},
    FaultKind.RESET: {"after_bytes": 1000},
    FaultKind.RATE_LIMIT_DATE: {"retry_in_s": 2.0, "clock_skew_s": 0.0},
    FaultKind.OUTAGE: {"duration_s": 5.0, "mode": "503", "after_requests": 0},
    FaultKind.MD5_LIST_BOMB: {"inflated_bytes": 1 << 30},
    FaultKind.CLAIM_FIGURES: {"image_count": 6_000_000, "total_bytes": None},
    FaultKind.BAD_UID_ROWS: {"uids": ("../../../etc/evil", "", "1." * 149 + "1", "1.2.840.\x1b[31m99")},
    FaultKind.ROW_VALUE: {"column": "ImageCount", "value": "many"},
    # issue 14, bounded bodies and redirects
    FaultKind.QUERY_BOMB: {"endpoint": "getCollectionValues", "inflated_bytes": 2**30, "encoding": "gzip"},
    FaultKind.ENDLESS_BODY: {"endpoint": "getCollectionValues"},
    FaultKind.REDIRECT: {"status": 302, "location": "http://[::1"},
    FaultKind.TOKEN_REDIRECT: {"status": 307, "location": "http://127.0.0.1:9/nbia-api/oauth/token"},
    FaultKind.ECHO_TOKEN: {},
    FaultKind.ECHO_HEADERS: {},
    FaultKind.THROTTLE_STORM: {"retry_after": "1", "scope": "all"},
    FaultKind.HOSTILE_NAMES: {"text": HOSTILE_TEXT},
    FaultKind.HOSTILE_ERROR: {"text": HOSTILE_TEXT},
}

DEFAULT_RANDOM_KINDS = (
    FaultKind.RATE_LIMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.UNAVAILABLE,
    FaultKind.CUT,
    FaultKind.SHORT_ZIP,
    FaultKind.FLIP_BYTE,
    FaultKind.EMPTY_200,
    FaultKind.HTML_200,
)


class FaultRule:
    """One fault: ``FaultRule(kind=FaultKind.CUT, series_uid=None, times=1, after_bytes=5000)``.

    Unknown parameter names for the kind raise ``ValueError`` at construction, so a typo in a test or
    a ``--fault`` option is caught before the server starts.
    """

    __slots__ = ("kind", "params", "series_uid", "times")

    def __init__(
        self, kind: FaultKind, series_uid: str | None = None, times: int | None = 1, **params: object
    ) -> None:
        unknown = set(params) - set(_DEFAULTS[kind])
        if unknown:
            raise ValueError(
                f"{kind.name} takes no parameter(s) {sorted(unknown)}; known: {sorted(_DEFAULTS[kind])}"
            )
        if times is not None and times < 0:
            raise ValueError("times must be >= 0 or None")
        if kind is FaultKind.OUTAGE and str(params.get("mode", "503")) not in OUTAGE_MODES:
            raise ValueError(f"OUTAGE mode must be one of {list(OUTAGE_MODES)}, not {params['mode']!r}")
        self.kind = kind
        self.series_uid = series_uid
        self.times = times
        self.params: dict[str, object] = {**_DEFAULTS[kind], **params}

    def __repr__(self) -> str:
        return (
            f"FaultRule({self.kind.name}, series_uid={self.series_uid!r}, times={self.times}, {self.params})"
        )

    def param_float(self, name: str) -> float:
        """A numeric parameter as float."""
        value = self.params[name]
        if not isinstance(value, int | float | str):
            raise TypeError(f"{name} must be a number")
        return float(value)

    def param_int(self, name: str) -> int:
        """A numeric parameter as int."""
        return int(self.param_float(name))

    def param_text(self, name: str) -> str | None:
        """A parameter as text (None stays None)."""
        value = self.params[name]
        return None if value is None else str(value)


@dataclass(frozen=True)
class FaultPlan:
    """The faults a :class:`~tcia_fetch.testing.FakeNBIA` injects (immutable; the server keeps the counts)."""

    rules: tuple[FaultRule, ...] | list[FaultRule] = ()
    random_rate: float = 0.0
    random_kinds: tuple[FaultKind, ...] = DEFAULT_RANDOM_KINDS
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_rate <= 1.0:
            raise ValueError("random_rate must be within [0, 1]")
        if self.random_rate and not self.random_kinds:
            raise ValueError("random_rate needs at least one random kind")
        bad = [kind for kind in self.random_kinds if kind not in DOWNLOAD_FAULTS]
        if bad:
            raise ValueError(f"random faults must be download faults, not {bad}")


@dataclass
class FaultState:
    """The live counters of a plan: remaining firings per rule, the seeded RNG, fired counts."""

    plan: FaultPlan
    remaining: list[int | None] = field(init=False)
    fired: dict[str, int] = field(default_factory=dict)
    # OUTAGE bookkeeping per rule index: API requests seen so far, and when the window opened.
    _outage_seen: dict[int, int] = field(default_factory=dict)
    _outage_started: dict[int, float] = field(default_factory=dict)
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.remaining = [rule.times for rule in self.plan.rules]
        self._rng = random.Random(self.plan.seed)

    def _take(self, kinds: frozenset[FaultKind], series_uids: Iterable[str]) -> list[FaultRule]:
        wanted = set(series_uids)
        taken: list[FaultRule] = []
        for index, rule in enumerate(self.plan.rules):
            if rule.kind not in kinds:
                continue
            if rule.series_uid is not None and rule.series_uid not in wanted:
                continue
            left = self.remaining[index]
            if left is not None and left <= 0:
                continue
            if left is not None:
                self.remaining[index] = left - 1
            self.fired[rule.kind.name] = self.fired.get(rule.kind.name, 0) + 1
            taken.append(rule)
        return taken

    def download_fault(self, series_uid: str) -> FaultRule | None:
        """The fault (if any) for one download request; consumes one firing."""
        with self._lock:
            taken = self._take_first(series_uid)
            if taken is not None:
                return taken
            if self.plan.random_rate and self._rng.random() < self.plan.random_rate:
                kind = self._rng.choice(self.plan.random_kinds)
                self.fired[kind.name] = self.fired.get(kind.name, 0) + 1
                return FaultRule(kind, series_uid=series_uid)
            return None

    def _take_first(self, series_uid: str) -> FaultRule | None:
        for index, rule in enumerate(self.plan.rules):
            if rule.kind not in DOWNLOAD_FAULTS:
                continue
            if rule.series_uid is not None and rule.series_uid != series_uid:
                continue
            left = self.remaining[index]
            if left is not None and left <= 0:
                continue
            if left is not None:
                self.remaining[index] = left - 1
            self.fired[rule.kind.name] = self.fired.get(rule.kind.name, 0) + 1
            return rule
        return None

    def query_faults(self, series_uids: Iterable[str]) -> list[FaultRule]:
        """Every query fault with firings left for a query request that names or returns these series.

        A rule without ``series_uid`` applies to every query request; a rule naming a series applies
        when the request names that series or its answer contains it. Consumes one firing per rule.
        """
        with self._lock:
            return self._take(QUERY_FAULTS, series_uids)

    def row_faults(self, series_uids: Iterable[str]) -> list[FaultRule]:
        """Every row fault with firings left for a series answer holding these series (one firing each)."""
        with self._lock:
            return self._take(ROW_FAULTS, series_uids)

    def outage(self, now: float) -> FaultRule | None:
        """The OUTAGE rule in force for an API request arriving at monotonic time ``now``, if any.

        Each OUTAGE rule counts API requests; the request after its first ``after_requests`` opens
        the window, and every request until ``duration_s`` later is answered by the outage (each one
        counted as a firing). After the window the rule is spent and the server is healthy again.
        """
        with self._lock:
            for index, rule in enumerate(self.plan.rules):
                if rule.kind is not FaultKind.OUTAGE:
                    continue
                seen = self._outage_seen.get(index, 0)
                self._outage_seen[index] = seen + 1
                if index not in self._outage_started:
                    if seen < rule.param_int("after_requests"):
                        continue
                    self._outage_started[index] = now
                if now - self._outage_started[index] < rule.param_float("duration_s"):
                    self.fired[rule.kind.name] = self.fired.get(rule.kind.name, 0) + 1
                    return rule
            return None

    # issue 14 (bodies): body faults are per endpoint, token faults per token request.
    def body_fault(self, endpoint: str) -> FaultRule | None:
        """The QUERY_BOMB / ENDLESS_BODY rule (if any) for one request to query ``endpoint``."""
        return self._first_of(BODY_FAULTS, endpoint)

    def token_fault(self) -> FaultRule | None:
        """The TOKEN_REDIRECT rule (if any) for one token request."""
        return self._first_of(TOKEN_FAULTS, None)

    def _first_of(self, kinds: frozenset[FaultKind], endpoint: str | None) -> FaultRule | None:
        with self._lock:
            for index, rule in enumerate(self.plan.rules):
                if rule.kind not in kinds:
                    continue
                if endpoint is not None and rule.param_text("endpoint") != endpoint:
                    continue
                left = self.remaining[index]
                if left is not None and left <= 0:
                    continue
                if left is not None:
                    self.remaining[index] = left - 1
                self.fired[rule.kind.name] = self.fired.get(rule.kind.name, 0) + 1
                return rule
            return None

    def hostile(self, kind: FaultKind) -> FaultRule | None:
        """The first rule of a hostile-server ``kind`` with firings left (consumes one), or None."""
        with self._lock:
            taken = self._take(frozenset({kind}), ())
            return taken[0] if taken else None

    def fired_counts(self) -> dict[str, int]:
        """How many times each kind fired so far."""
        with self._lock:
            return dict(self.fired)
