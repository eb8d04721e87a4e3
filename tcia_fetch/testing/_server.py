"""The fake NBIA application: routes, the request log, auth rules, legacy token endpoint, serving.

Routes: v4 under ``/nbia-api/services/v4/`` and ``/nbia-api/v4/`` (the keycloak deployment maps Jersey to
both); with ``legacy=True`` also ``/nbia-api/services/v1/``, ``/v2/`` (same data; v1/v2 column names for
getSeries; v2 needs a bearer token from ``/nbia-api/oauth/token`` or ``/nbia-api/services/oauth/token``);
``GET /nbia-api/services/up`` answers ``up``.

Auth: on v4 an absent header or ``Bearer undefined`` is the guest; any other ``Authorization`` is
rejected with 401 and an empty body (the server validates it against Keycloak). On v2 a missing header is
the server's NullPointerException (500 ``...\\nnull``), an unknown or expired token 401.

Unknown paths answer ``500 Server was not able to process your request\\nHTTP 404 Not Found`` — what the
catch-all exception mapper most likely does (UNCERTAIN in reference/nbia-api.md §3.5); pass
``unknown_path_status=404`` to get a plain 404 instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from tcia_fetch.testing._auth import TokenError, TokenStore
from tcia_fetch.testing._catalog import Catalog
from tcia_fetch.testing._downloads import DOWNLOAD_ENDPOINTS
from tcia_fetch.testing._faults import FaultPlan, FaultState
from tcia_fetch.testing._formats import ERROR_PREFIX, SERVER_ERROR_NULL
from tcia_fetch.testing._hostile_secrets import token_fault
from tcia_fetch.testing._load import LoadModel, ServerStats
from tcia_fetch.testing._queries import QUERY_ENDPOINTS
from tcia_fetch.testing._state import COMPLETED_KEY, ServerState, make_handler, text_response

__all__ = ["FakeNBIA", "RequestRecord", "RunningServer"]

logger = logging.getLogger("tcia_fetch.testing.server")

_V4_PREFIXES = ("/nbia-api/services/v4/", "/nbia-api/v4/")
_TOKEN_PATHS = ("/nbia-api/oauth/token", "/nbia-api/services/oauth/token")
_LOGGED_HEADERS = ("Authorization", "Range", "User-Agent", "Accept", "Content-Type")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it (appended when the response is done)."""

    method: str
    path: str
    query: dict[str, str]
    query_items: tuple[tuple[str, str], ...]
    form_items: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    status: int
    started_at: float
    duration_s: float
    completed: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """The last path segment (``getImage``, ``getSeries``...)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def _generation_of(path: str) -> int | None:
    for generation in (4, 2, 1):
        if f"/v{generation}/" in path:
            return generation
    return None


class FakeNBIA:
    """An in-process NBIA v4 look-alike, quirks included, for tests, benchmarks and the demo.

    Parameters: ``catalog`` (what the archive holds), ``faults`` (a :class:`FaultPlan`), ``load`` (a
    :class:`LoadModel`), ``restricted_series`` (in the catalog but treated as non-public), ``legacy``
    (serve v1/v2 and the token endpoint), ``users`` (legacy accounts besides ``nbia_guest``),
    ``token_lifetime_s`` / ``refresh_lifetime_s`` (token ``expires_in`` / ``refresh_expires_in``),
    ``unknown_path_status`` (500 as the real mapper or 404), ``chunk_bytes`` (write size of streams),
    ``include_md5_supported`` (False: an older deployment whose getImage refuses ``IncludeMD5``).
    One instance may be served several times; counters and the request log accumulate.
    """

    def __init__(
        self,
        catalog: Catalog,
        faults: FaultPlan | None = None,
        load: LoadModel | None = None,
        restricted_series: Iterable[str] = frozenset(),
        legacy: bool = True,
        *,
        users: Mapping[str, str] | None = None,
        token_lifetime_s: float = 7200.0,
        refresh_lifetime_s: float = 14400.0,
        unknown_path_status: int = 500,
        chunk_bytes: int = 64 * 1024,
        include_md5_supported: bool = True,
    ) -> None:
        self.catalog = catalog
        self.fault_plan = faults or FaultPlan()
        self.load = load or LoadModel()
        self.legacy = legacy
        self.unknown_path_status = unknown_path_status
        self.tokens = TokenStore(
            users=users, token_lifetime_s=token_lifetime_s, refresh_lifetime_s=refresh_lifetime_s
        )
        self.state = ServerState(
            catalog=catalog,
            faults=FaultState(self.fault_plan),
            load=self.load,
            restricted=frozenset(restricted_series),
            tokens=self.tokens,
            chunk_bytes=chunk_bytes,
            include_md5_supported=include_md5_supported,
        )
        self.request_log: list[RequestRecord] = []

    # ---- counters -------------------------------------------------------------------------------
    def stats(self) -> ServerStats:
        """Counters so far (downloads, 429s, peak concurrency, tokens, faults fired, statuses)."""
        counter = self.state.stats
        counter.token_grants = self.tokens.grants
        counter.token_refreshes = self.tokens.refreshes
        counter.token_rejections = self.tokens.rejections
        return counter.snapshot(self.state.faults.fired_counts())

    def expire_tokens(self) -> None:
        """Expire every issued access token now (legacy token-refresh tests)."""
        self.tokens.expire_all()

    # ---- application ----------------------------------------------------------------------------
    def app(self) -> web.Application:
        """A fresh aiohttp application over this fake's state (for ``aiohttp.test_utils.TestServer``)."""
        app = web.Application(
            middlewares=[self._log_middleware, self._auth_middleware], client_max_size=64 * 2**20
        )
        generations = [4, 1, 2] if self.legacy else [4]
        for generation in generations:
            prefixes = _V4_PREFIXES if generation == 4 else (f"/nbia-api/services/v{generation}/",)
            for prefix in prefixes:
                for name, (method, function) in QUERY_ENDPOINTS.items():
                    app.router.add_route(
                        method, prefix + name, make_handler(function, self.state, generation)
                    )
                for name, download in DOWNLOAD_ENDPOINTS.items():
                    app.router.add_route("GET", prefix + name, make_handler(download, self.state, generation))
        app.router.add_get("/nbia-api/services/up", self._up)
        if self.legacy:
            for path in _TOKEN_PATHS:
                app.router.add_post(path, self._token)
            app.router.add_get("/nbia-api/logout", self._logout)
        return app

    async def _up(self, request: web.Request) -> web.StreamResponse:
        del request
        return text_response(200, "up")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        redirect = self.state.faults.token_fault()  # issue 14 (bodies): a 307 to another origin
        if redirect is not None:
            location = redirect.param_text("location") or ""
            return web.Response(status=redirect.param_int("status"), headers={"Location": location})
        hostile = await token_fault(self.state, request)  # a throttle storm, or the form echoed
        if hostile is not None:
            return hostile
        form = await request.post()
        grant_type = form.get("grant_type")
        try:
            if grant_type == "password":
                username = form.get("username")
                password = form.get("password")
                grant = self.tokens.password_grant(
                    None if username is None else str(username), None if password is None else str(password)
                )
            elif grant_type == "refresh_token":
                refresh = form.get("refresh_token")
                grant = self.tokens.refresh_grant(None if refresh is None else str(refresh))
            elif grant_type is None:
                return text_response(500, SERVER_ERROR_NULL)
            else:
                raise TokenError(400, "unsupported_grant_type", f"Wrong grant_type {grant_type!s}")
        except TokenError as exc:
            return web.json_response(
                {"error": exc.error, "error_description": exc.description}, status=exc.status
            )
        return web.json_response(grant.as_json(self.tokens.now()))

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        self.tokens.revoke(header.partition(" ")[2].strip())
        return text_response(200, "You have been logged out.")

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        generation = _generation_of(request.path)
        header = request.headers.get("Authorization")
        guest = header is None or header.strip() == "Bearer undefined"
        if generation == 4 and not guest and not self.tokens.validate(header or ""):
            return web.Response(status=401)
        if generation == 2 and request.path.startswith("/nbia-api/services/v2/"):
            if header is None:
                return text_response(500, SERVER_ERROR_NULL)
            if not self.tokens.validate(header):
                return web.Response(status=401)
        return await handler(request)

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        self.state.stats.requests += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status in (404, 405) and self.unknown_path_status == 500:
                response = text_response(500, f"{ERROR_PREFIX}\nHTTP {exc.status} {exc.reason}")
            else:
                raise
        form_items: tuple[tuple[str, str], ...] = ()
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            with contextlib.suppress(Exception):
                form = await request.post()
                form_items = tuple((key, str(value)) for key, value in form.items())
        completed = request.get(COMPLETED_KEY, True)
        self.state.stats.count_status(response.status)
        self.request_log.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                query_items=tuple(request.query.items()),
                form_items=form_items,
                headers={name: request.headers[name] for name in _LOGGED_HEADERS if name in request.headers},
                status=response.status,
                started_at=started,
                duration_s=time.monotonic() - started,
                completed=completed,
            )
        )
        return response

    # ---- serving --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> AsyncIterator[RunningServer]:
        """Listen on ``host:port`` (0 = any free port) until the block exits; over TLS with
        ``ssl_context`` (a server context holding the certificate), as the real archive serves."""
        await asyncio.get_running_loop().run_in_executor(None, self.catalog.warm)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
            await site.start()
            bound = runner.addresses[0]
            server = RunningServer(self, host=str(bound[0]), port=int(bound[1]), tls=ssl_context is not None)
            logger.info("fake NBIA listening on %s", server.root_url)
            yield server
        finally:
            await runner.cleanup()


class RunningServer:
    """Where a served :class:`FakeNBIA` listens, and its log and counters."""

    def __init__(self, fake: FakeNBIA, *, host: str, port: int, tls: bool = False) -> None:
        self.fake = fake
        self.host = host
        self.port = port
        self.tls = tls

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT/`` (``https`` when served over TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    @property
    def base_url(self) -> str:
        """The v4 API root with a trailing slash."""
        return f"{self.root_url}nbia-api/services/v4/"

    def legacy_base_url(self, version: int) -> str:
        """The v1 or v2 API root."""
        if version not in (1, 2):
            raise ValueError("legacy versions are 1 and 2")
        return f"{self.root_url}nbia-api/services/v{version}/"

    @property
    def token_url(self) -> str:
        """The legacy OAuth token endpoint."""
        return f"{self.root_url}nbia-api/oauth/token"

    @property
    def request_log(self) -> list[RequestRecord]:
        """Every request so far, oldest first."""
        return self.fake.request_log

    def stats(self) -> ServerStats:
        """The fake's counters now."""
        return self.fake.stats()
