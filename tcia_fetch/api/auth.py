"""Bearer tokens for the legacy v2 API: obtained, refreshed and shared single-flight.

v4 needs no token and must never be sent one (a stale token turns every v4 call into 401,
nbia-api.md §2.1). v2 needs ``Authorization: Bearer <token>``; the public guest account is
``nbia_guest`` with an empty password (§2.2). Tokens expire (``expires_in``, two hours
historically): :class:`TokenManager` refreshes shortly before expiry, and on a 401 the
caller asks for a refresh *of the token generation it used*. Under an ``anyio.Lock`` only
the first such caller refreshes; the others see a newer generation and reuse its token, so
a burst of N concurrent 401s costs exactly one token request.

Tokens are held as :class:`~pydantic.SecretStr` and never put in messages or reprs. The token
POST never follows a redirect (the poster refuses it): a 3xx answer would have the form, with the
password, re-sent to wherever the server points. It is an authentication failure naming the
redirect's origin, never the form. The password and every token are also registered with
:mod:`tcia_fetch.redaction`, so a server that echoes them cannot get them into an output either.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
from pydantic import SecretStr

from tcia_fetch.api.parse import parse_json_rows
from tcia_fetch.errors import HTTPStatusError, RedirectError, ResponseFormatError, UnauthorizedError
from tcia_fetch.redaction import register_secret

__all__ = ["CLIENT_ID", "TokenManager", "TokenPoster"]

#: The OAuth client id NBIA's token endpoint expects (it overrides it for password grants).
CLIENT_ID = "NBIA"
#: Refresh this many seconds before the server's stated expiry.
_EXPIRY_MARGIN_S = 60.0
_DEFAULT_LIFETIME_S = 7200.0

#: Sends a form to the token URL and returns the response body (raises mapped errors).
TokenPoster = Callable[[str, Mapping[str, str]], Awaitable[bytes]]


@dataclass(frozen=True)
class _Token:
    access: SecretStr
    refresh: SecretStr | None
    expires_at: float
    refresh_expires_at: float | None

    def __repr__(self) -> str:
        return "_Token(<redacted>)"


class TokenManager:
    """Holds one bearer token for one token URL and refreshes it at most once per expiry.

    Args:
        post_form: performs the token POST; injected so that this module has no I/O of
            its own.
        token_url: where tokens come from (used in messages; never contains secrets).
        username, password: the account; the guest account by default.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        post_form: TokenPoster,
        *,
        token_url: str,
        username: str,
        password: SecretStr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post_form = post_form
        self._token_url = token_url
        self._username = username
        self._password = password
        register_secret(password)  # a token endpoint may echo the form it was posted
        self._clock = clock
        self._lock = anyio.Lock()
        self._token: _Token | None = None
        self._generation = 0
        self.requests_made = 0

    def __repr__(self) -> str:
        return (
            f"TokenManager(token_url={self._token_url!r}, username={self._username!r}, "
            f"generation={self._generation})"
        )

    @property
    def generation(self) -> int:
        """Increments with every new token; 0 before the first."""
        return self._generation

    def _usable(self) -> bool:
        return self._token is not None and self._clock() < self._token.expires_at - _EXPIRY_MARGIN_S

    async def current(self) -> tuple[str, int]:
        """Return a usable token and its generation, obtaining or refreshing it if needed."""
        if not self._usable():
            await self._renew(seen_generation=self._generation)
        assert self._token is not None
        return self._token.access.get_secret_value(), self._generation

    async def refresh(self, seen_generation: int) -> tuple[str, int]:
        """The token of ``seen_generation`` was refused: get a newer one (single-flight)."""
        await self._renew(seen_generation=seen_generation, force=True)
        assert self._token is not None
        return self._token.access.get_secret_value(), self._generation

    async def _renew(self, *, seen_generation: int, force: bool = False) -> None:
        async with self._lock:
            if self._generation != seen_generation and self._token is not None:
                return  # another task renewed while we waited
            if not force and self._usable():
                return
            self._token = await self._obtain()
            self._generation += 1

    async def _obtain(self) -> _Token:
        previous = self._token
        now = self._clock()
        if (
            previous is not None
            and previous.refresh is not None
            and (previous.refresh_expires_at is None or now < previous.refresh_expires_at - _EXPIRY_MARGIN_S)
        ):
            try:
                return await self._grant(
                    {
                        "grant_type": "refresh_token",
                        "refresh_token": previous.refresh.get_secret_value(),
                        "client_id": CLIENT_ID,
                    }
                )
            except HTTPStatusError:
                pass  # refresh token refused: fall back to the password grant
        return await self._grant(
            {
                "grant_type": "password",
                "username": self._username,
                "password": self._password.get_secret_value(),
                "client_id": CLIENT_ID,
            }
        )

    async def _grant(self, form: Mapping[str, str]) -> _Token:
        self.requests_made += 1
        started = self._clock()
        try:
            body = await self._post_form(self._token_url, form)
        except UnauthorizedError as exc:
            raise UnauthorizedError(
                f"the token endpoint refused the credentials of user {self._username!r}",
                status=exc.status,
                url=self._token_url,
            ) from None
        except RedirectError as exc:
            raise UnauthorizedError(
                f"the token endpoint answered with a redirect; credentials not sent again ({exc.message})",
                status=0,
                url=self._token_url,
            ) from None
        try:
            rows = parse_json_rows(body)
        except ResponseFormatError:
            raise ResponseFormatError(
                "token endpoint answered with something other than JSON", url=self._token_url
            ) from None
        access = rows[0].get("access_token") if rows else None
        if not isinstance(access, str) or not access:
            raise ResponseFormatError("token endpoint answered without an access_token", url=self._token_url)
        register_secret(access)  # before anything can echo it back
        refresh = rows[0].get("refresh_token")
        if isinstance(refresh, str):
            register_secret(refresh)
        expires_in = _seconds(rows[0].get("expires_in")) or _DEFAULT_LIFETIME_S
        refresh_expires_in = _seconds(rows[0].get("refresh_expires_in"))
        return _Token(
            access=SecretStr(access),
            refresh=SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
            expires_at=started + expires_in,
            refresh_expires_at=started + refresh_expires_in if refresh_expires_in is not None else None,
        )


def _seconds(value: object) -> float | None:
    """A plausible lifetime in seconds, or None for absent or nonsense values."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 10**7 else None
