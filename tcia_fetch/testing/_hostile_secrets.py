"""Hostile modes of the fake NBIA about what a server says back (issue 14: secrets and text).

* ``ECHO_TOKEN``: the token endpoint answers 500 quoting the url-encoded form it received, as a
  careless error page of a legacy deployment would: the password is in it.
* ``ECHO_HEADERS``: a query answers 400 with the request headers (``Authorization: Bearer ...``).
* ``THROTTLE_STORM``: 429 with ``Retry-After`` on every request (or on downloads only), forever.
* ``HOSTILE_NAMES``: terminal escapes, bidi overrides, rich markup and a spreadsheet formula in the
  descriptive fields of JSON query rows and as an extra collection name.

(``HOSTILE_ERROR``, a 400 whose text is hostile, is a per-download fault in _downloads.py.)
Endpoints are wrapped by :func:`secrets_guard`; the token endpoint asks :func:`token_fault`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from tcia_fetch.testing._faults import FaultKind, FaultRule
from tcia_fetch.testing._formats import ERROR_PREFIX
from tcia_fetch.testing._state import ServerState, text_response

__all__ = ["HOSTILE_FIELDS", "secrets_guard", "token_fault"]

_Endpoint = Callable[[ServerState, int, web.Request], Awaitable[web.StreamResponse]]

#: Row keys whose values HOSTILE_NAMES replaces (descriptions and names, never UIDs or counts).
HOSTILE_FIELDS = frozenset(
    {"SeriesDescription", "StudyDescription", "StudyDesc", "ProtocolName", "Manufacturer"}
)
_THROTTLED = "Too Many Requests"


def _throttled(rule: FaultRule) -> web.Response:
    response = text_response(429, _THROTTLED)
    response.headers["Retry-After"] = rule.param_text("retry_after") or "1"
    return response


def _storm(state: ServerState, *, download: bool) -> FaultRule | None:
    rule = state.faults.hostile(FaultKind.THROTTLE_STORM)
    if rule is None:
        return None
    if rule.param_text("scope") == "downloads" and not download:
        return None
    return rule


async def token_fault(state: ServerState, request: web.Request) -> web.StreamResponse | None:
    """The token endpoint's hostile answer (a storm's 429 or the echoed form), or None."""
    storm = _storm(state, download=False)
    if storm is not None:
        return _throttled(storm)
    if state.faults.hostile(FaultKind.ECHO_TOKEN) is None:
        return None
    posted = (await request.read()).decode("utf-8", errors="replace")
    return text_response(500, f"{ERROR_PREFIX}\nrequest body was: {posted}")


def _echo_headers(request: web.Request) -> web.Response:
    headers = sorted(request.headers.items(), key=lambda item: item[0].lower() != "authorization")
    listing = "\n".join(f"{name}: {value}" for name, value in headers)
    return text_response(400, f"Bad request. Headers received:\n{listing}")


def _rewrite(document: object, text: str) -> object:
    if isinstance(document, list):
        return [_rewrite(item, text) for item in document]
    if isinstance(document, dict):
        return {
            key: text if key in HOSTILE_FIELDS and isinstance(value, str) else value
            for key, value in document.items()
        }
    return document


def _hostile_rows(response: web.StreamResponse, request: web.Request, rule: FaultRule) -> web.StreamResponse:
    if not isinstance(response, web.Response) or response.status != 200 or not response.body:
        return response
    body = response.body
    if not isinstance(body, bytes):
        return response
    try:
        document = json.loads(body)
    except ValueError:
        return response  # CSV and other formats are left alone
    text = rule.param_text("text") or ""
    document = _rewrite(document, text)
    if request.path.endswith("/getCollectionValues") and isinstance(document, list):
        document.append({"Collection": text})
    rewritten = web.Response(status=200, body=json.dumps(document).encode("utf-8"))
    rewritten.headers["Content-Type"] = "application/json"
    return rewritten


def secrets_guard(function: _Endpoint, *, download: bool = False) -> _Endpoint:
    """Wrap an API endpoint with the storm, echo and hostile-names modes."""

    async def guarded(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
        storm = _storm(state, download=download)
        if storm is not None:
            return _throttled(storm)
        if not download:
            if state.faults.hostile(FaultKind.ECHO_HEADERS) is not None:
                return _echo_headers(request)
            names = state.faults.hostile(FaultKind.HOSTILE_NAMES)
            if names is not None:
                return _hostile_rows(await function(state, generation, request), request, names)
        return await function(state, generation, request)

    guarded.__doc__ = function.__doc__
    guarded.__name__ = getattr(function, "__name__", "endpoint")
    return guarded
