"""The credentials this process holds, and the one scrub that keeps them out of every output.

A hostile or broken server may echo what it received: a legacy token endpoint answering 500
with the posted form (``password=...``), a query answering 400 with the request headers
(``Authorization: Bearer ...``). Whatever the server says ends up in error messages, and those
reach the terminal, the run reports and the journal. So every secret the program reads or is
given is *registered* here the moment it is known (the password when settings are loaded and
when a :class:`~tcia_fetch.api.auth.TokenManager` is made, each access and refresh token when
the token endpoint hands it out, AWS keys from the environment), and :func:`scrub` replaces
every registered secret in a text with ``[redacted]``.

:func:`scrub` runs where server text enters the program (error excerpts, every
:class:`~tcia_fetch.errors.TciaFetchError` message) and once more where reports and messages
are written, as a last line of defence. It also catches the forms an echo may use: URL-encoded
(a form body is ``password=a%2Bb``, in upper- or lower-case hex, ``+`` or ``%20`` for a space),
JSON- and HTML-escaped, and base64 (``Authorization: Basic`` or a dump of raw bytes; the three
alignments a secret can have inside a longer base64 text are covered).

Secrets shorter than :data:`MIN_SECRET_CHARS` are not registered: scrubbing every ``abc`` from
every message would make them unreadable, and the guest account's password is empty. The set
lives for the process (tokens from earlier refreshes stay registered: an echo may carry an old
one); it is guarded by a lock because threads (journal, reports) scrub too.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Mapping
from typing import Final, Protocol
from urllib.parse import quote, quote_plus

__all__ = [
    "ENVIRONMENT_SECRETS",
    "MIN_SECRET_CHARS",
    "REDACTED",
    "forget_secrets",
    "register_environment_secrets",
    "register_secret",
    "registered_secret_count",
    "scrub",
    "scrub_data",
]

#: What a secret is replaced with.
REDACTED: Final = "[redacted]"
#: Shorter secrets are not scrubbed (see the module docstring).
MIN_SECRET_CHARS: Final = 4
#: A base64 fragment shorter than this could match ordinary text by chance.
_MIN_BASE64_CORE_CHARS: Final = 8
#: Environment variables holding credentials the program may send somewhere.
ENVIRONMENT_SECRETS: Final = (
    "TCIA_FETCH_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)

_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")


class _HasSecretValue(Protocol):
    def get_secret_value(self) -> str: ...


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secret: str) -> None:
        with self._lock:
            if secret not in self._secrets:
                self._secrets.add(secret)
                self._pattern = None

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._secrets)

    def pattern(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._secrets:
                forms = {form for secret in self._secrets for form in _forms(secret)}
                # Longest first: a longer form (the encoded secret) wins over a shorter one inside it.
                alternatives = sorted(forms, key=lambda form: (-len(form), form))
                self._pattern = re.compile("|".join(re.escape(form) for form in alternatives))
            return self._pattern


_REGISTRY = _Registry()


def _forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` an echo may plausibly use."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms.add(html.escape(secret, quote=True))
    for encoded in (quote_plus(secret, safe=""), quote(secret, safe="")):
        forms.add(encoded)
        forms.add(_PERCENT_HEX.sub(lambda match: match.group(0).lower(), encoded))
    raw = secret.encode("utf-8")
    for offset in range(3):
        encoded_text = base64.b64encode(bytes(offset) + raw).decode("ascii")
        # Characters wholly made of the secret's bits: the first and last may mix in neighbours.
        start = -(-8 * offset // 6)
        end = (8 * (offset + len(raw))) // 6
        core = encoded_text[start:end]
        if len(core) >= _MIN_BASE64_CORE_CHARS:
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    forms.discard("")
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def register_secret(secret: str | _HasSecretValue | None) -> None:
    """Remember ``secret`` (a string or a pydantic ``SecretStr``) so :func:`scrub` removes it."""
    if secret is None:
        return
    value = secret if isinstance(secret, str) else secret.get_secret_value()
    if len(value) >= MIN_SECRET_CHARS:
        _REGISTRY.add(value)


def register_environment_secrets(environment: Mapping[str, str]) -> None:
    """Register the credentials found in ``environment`` (see :data:`ENVIRONMENT_SECRETS`)."""
    for name in ENVIRONMENT_SECRETS:
        register_secret(environment.get(name))


def registered_secret_count() -> int:
    """How many secrets are registered (for tests and diagnostics; never the secrets)."""
    return len(_REGISTRY)


def forget_secrets() -> None:
    """Drop every registered secret (tests; a long-lived notebook after logging out)."""
    _REGISTRY.clear()


def scrub(text: str) -> str:
    """``text`` with every registered secret (in any of its spellings) replaced by ``[redacted]``."""
    pattern = _REGISTRY.pattern()
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def scrub_data(value: object) -> object:
    """:func:`scrub` applied to every string inside a JSON-like value (dicts, lists, tuples)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {
            scrub(str(key)) if isinstance(key, str) else key: scrub_data(item) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_data(item) for item in value]
    return value
