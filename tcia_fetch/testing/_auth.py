"""Legacy (v2 / "Advanced" API) bearer tokens: the ``oauth/token`` endpoint's logic, without HTTP.

The real ``/nbia-api/oauth/token`` proxies to Keycloak: ``grant_type=password`` with ``username`` and
``password`` (the configured guest ``nbia_guest`` works with any password), or
``grant_type=refresh_token`` with ``refresh_token``; the answer is Keycloak's JSON
(``access_token, expires_in, refresh_expires_in, refresh_token, token_type, id_token,
not-before-policy, session_state, scope``). Tokens here are opaque random strings with lifetimes read
from a monotonic clock; grants and refreshes are counted so a client's single-flight refresh can be
tested against the numbers.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["GUEST_USERNAME", "TokenError", "TokenGrant", "TokenStore"]

GUEST_USERNAME = "nbia_guest"


class TokenError(Exception):
    """A token request the fake refuses; ``status`` and Keycloak-shaped ``error`` say why."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One issued access/refresh token pair."""

    access_token: str
    refresh_token: str
    username: str
    access_expires_at: float
    refresh_expires_at: float

    def as_json(self, now: float) -> dict[str, object]:
        """The Keycloak response body."""
        return {
            "access_token": self.access_token,
            "expires_in": max(0, round(self.access_expires_at - now)),
            "refresh_expires_in": max(0, round(self.refresh_expires_at - now)),
            "refresh_token": self.refresh_token,
            "token_type": "bearer",
            "id_token": "fake-id-token." + self.access_token[:12],
            "not-before-policy": 0,
            "session_state": self.refresh_token[:16],
            "scope": "openid email profile",
        }


class TokenStore:
    """Issues, refreshes and validates tokens; counts grants and refreshes."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        token_lifetime_s: float = 7200.0,
        refresh_lifetime_s: float = 14400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = dict(users or {})
        self._access_lifetime = token_lifetime_s
        self._refresh_lifetime = refresh_lifetime_s
        self._clock = clock
        self._by_access: dict[str, TokenGrant] = {}
        self._by_refresh: dict[str, TokenGrant] = {}
        self.grants = 0
        self.refreshes = 0
        self.rejections = 0

    def now(self) -> float:
        """The store's clock."""
        return self._clock()

    def _issue(self, username: str) -> TokenGrant:
        now = self._clock()
        grant = TokenGrant(
            access_token=secrets.token_urlsafe(24),
            refresh_token=secrets.token_urlsafe(24),
            username=username,
            access_expires_at=now + self._access_lifetime,
            refresh_expires_at=now + self._refresh_lifetime,
        )
        self._by_access[grant.access_token] = grant
        self._by_refresh[grant.refresh_token] = grant
        return grant

    def password_grant(self, username: str | None, password: str | None) -> TokenGrant:
        """``grant_type=password``: the guest with any password, or a configured user."""
        if username == GUEST_USERNAME or (
            username is not None and self._users.get(username) == (password or "")
        ):
            self.grants += 1
            return self._issue(username)
        self.rejections += 1
        raise TokenError(401, "invalid_grant", "Invalid user credentials")

    def refresh_grant(self, refresh_token: str | None) -> TokenGrant:
        """``grant_type=refresh_token``: a new pair; the old refresh token stops working."""
        grant = self._by_refresh.get(refresh_token or "")
        if grant is None or grant.refresh_expires_at <= self._clock():
            self.rejections += 1
            raise TokenError(400, "invalid_grant", "Invalid refresh token")
        del self._by_refresh[grant.refresh_token]
        self.refreshes += 1
        return self._issue(grant.username)

    def validate(self, authorization: str) -> bool:
        """Whether ``Authorization: Bearer <token>`` names a live access token."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        grant = self._by_access.get(token.strip())
        return grant is not None and grant.access_expires_at > self._clock()

    def expire_all(self) -> None:
        """Make every issued access token expired now (refresh tokens stay valid)."""
        now = self._clock()
        for token, grant in list(self._by_access.items()):
            expired = TokenGrant(
                access_token=grant.access_token,
                refresh_token=grant.refresh_token,
                username=grant.username,
                access_expires_at=now,
                refresh_expires_at=grant.refresh_expires_at,
            )
            self._by_access[token] = expired
            if grant.refresh_token in self._by_refresh:
                self._by_refresh[grant.refresh_token] = expired

    def revoke(self, access_token: str) -> None:
        """Logout: forget an access token and its refresh token."""
        grant = self._by_access.pop(access_token, None)
        if grant is not None:
            self._by_refresh.pop(grant.refresh_token, None)
