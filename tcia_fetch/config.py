"""Client settings (where the NBIA API is, timeouts, connections) and how they are loaded.

Precedence, lowest first: defaults < config file ``[server]`` table < environment
(``TCIA_FETCH_BASE_URL``) < an explicit ``--base-url``. The config file is the one given,
else ``$XDG_CONFIG_HOME/tcia-fetch/config.toml`` (``~/.config/…``) when it exists. The
environment is read only inside :func:`load_client_settings`, never at import.

Legacy (v1/v2) credentials come only from ``TCIA_FETCH_USERNAME``/``TCIA_FETCH_PASSWORD``
or from a credentials file (TOML with ``username``/``password``) that must not be
readable by group or others — never from the command line, never from the shared config
file. The password is a :class:`~pydantic.SecretStr`: it never appears in a repr, a log
line or an error message. With no credentials the public guest account is used.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tcia_fetch._version import __version__
from tcia_fetch.errors import InputError, redact_url
from tcia_fetch.redaction import register_environment_secrets, register_secret

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_NLST_HOST",
    "GUEST_USERNAME",
    "ClientSettings",
    "default_config_path",
    "default_user_agent",
    "load_client_settings",
    "parse_byte_size",
]

DEFAULT_BASE_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"
DEFAULT_NLST_HOST = "https://nlst.cancerimagingarchive.net"
GUEST_USERNAME = "nbia_guest"

ApiVersionSetting = Literal["v4", "v2", "v1"]

#: Small answers (value lists, counts, sizes, tokens) are a few kB on the real server; they are
#: collected whole, so their ceiling is what they may cost in memory.
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
#: Large answers are parsed row by row as they stream: a whole-collection getSeries is hundreds
#: of MB, so this only ends runaway bodies, while memory is bounded by the row size.
DEFAULT_MAX_STREAMED_BODY_BYTES = 4 * 2**30
#: Real JSON and CSV answers compress 5-20x; a zero-filled bomb compresses about 1000x.
DEFAULT_MAX_COMPRESSION_RATIO = 200.0

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", re.IGNORECASE)


def parse_byte_size(text: str) -> int:
    """``"4GiB"``, ``"500MB"``, ``"65536"``: a byte count (binary with ``i``, decimal without)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a byte size: {text[:40]!r} (e.g. 64MiB, 4GiB, 1000000)")
    number, unit, binary = match.groups()
    power = "KMGT".find(unit.upper()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def default_user_agent() -> str:
    """``tcia-fetch/<version>``, from ``tcia_fetch._version`` (not ``tcia_fetch.__version__``)
    so that this module can be imported while the package itself is still initialising."""
    return f"tcia-fetch/{__version__}"


def _infer_api_version(base_url: str) -> ApiVersionSetting:
    path = urlsplit(base_url).path.rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if last in ("v1", "v2"):
        return "v1" if last == "v1" else "v2"
    return "v4"


class ClientSettings(BaseModel):
    """How to reach the NBIA API. Frozen; unknown keys are refused.

    ``nlst_base_url`` and ``token_url`` default to values derived from ``base_url`` (NLST
    host with the same API version; ``<scheme>://<host>/nbia-api/oauth/token``), and
    ``api_version`` to the last path segment of ``base_url`` (``/v1/``, ``/v2/``, else v4).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root, e.g. …/nbia-api/services/v4/")
    nlst_base_url: str | None = Field(default=None, description="API root for the NLST collection")
    api_version: ApiVersionSetting | None = Field(default=None, description="v4, or legacy v2/v1")
    token_url: str | None = Field(default=None, description="OAuth token URL (legacy v2 only)")
    connect_timeout_s: float = Field(default=30.0, gt=0, description="TCP+TLS connect deadline")
    first_byte_timeout_s: float = Field(default=180.0, gt=0, description="deadline for response headers")
    stall_timeout_s: float = Field(default=120.0, gt=0, description="longest gap with no body bytes")
    query_timeout_s: float = Field(default=600.0, gt=0, description="deadline for a whole query")
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="download connections; a run sizes its pool from --concurrency (8 for queries alone)",
    )
    user_agent: str = Field(default_factory=default_user_agent, min_length=1)
    # Bounds on what the server may send (issue 14). Real answers are far below them.
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=64 * 1024,
        description="ceiling of a small answer read whole (value lists, counts, sizes, tokens)",
    )
    max_streamed_body_bytes: int = Field(
        default=DEFAULT_MAX_STREAMED_BODY_BYTES,
        ge=2**20,
        description="ceiling of a large answer parsed as it streams (getSeries, getSeriesMetadata, ...)",
    )
    max_compression_ratio: float = Field(
        default=DEFAULT_MAX_COMPRESSION_RATIO,
        ge=2,
        description="refuse a gzip/deflate body inflating more than this (past its first MiB)",
    )
    cross_origin_redirects: bool = Field(
        default=False,
        description="follow redirects to another host (a CDN); https->http is refused regardless",
    )
    username: str = Field(default=GUEST_USERNAME, description="legacy API user (env or credentials file)")
    password: SecretStr = Field(default=SecretStr(""), description="legacy API password (never logged)")

    @field_validator("max_body_bytes", "max_streamed_body_bytes", mode="before")
    @classmethod
    def _parse_bytes(cls, value: object) -> object:
        return parse_byte_size(value) if isinstance(value, str) else value

    @field_validator("base_url", "nlst_base_url", "token_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_url(value)}")
        return value

    @model_validator(mode="after")
    def _derive(self) -> Self:
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        version = self.api_version or _infer_api_version(base)
        nlst = self.nlst_base_url or f"{DEFAULT_NLST_HOST}/nbia-api/services/{version}/"
        if not nlst.endswith("/"):
            nlst += "/"
        token_url = self.token_url
        if token_url is None:
            parts = urlsplit(base)
            token_url = f"{parts.scheme}://{parts.netloc}/nbia-api/oauth/token"
        # Frozen model: fill the derived values in place once, during validation.
        object.__setattr__(self, "base_url", base)
        object.__setattr__(self, "api_version", version)
        object.__setattr__(self, "nlst_base_url", nlst)
        object.__setattr__(self, "token_url", token_url)
        return self

    @property
    def version(self) -> ApiVersionSetting:
        """The API generation in use (never None after validation)."""
        return self.api_version or "v4"

    def nlst_token_url(self) -> str:
        """Token URL for the NLST host (legacy only): same path, NLST's own host."""
        parts = urlsplit(self.nlst_base_url or DEFAULT_NLST_HOST)
        return f"{parts.scheme}://{parts.netloc}/nbia-api/oauth/token"


#: Settings the environment may give (beside the base URL and credentials): above the config file.
_ENV_KEYS = {
    "max_body_bytes": "TCIA_FETCH_MAX_BODY_BYTES",
    "max_streamed_body_bytes": "TCIA_FETCH_MAX_STREAMED_BODY_BYTES",
    "max_compression_ratio": "TCIA_FETCH_MAX_COMPRESSION_RATIO",
    "cross_origin_redirects": "TCIA_FETCH_CROSS_ORIGIN_REDIRECTS",
}

_SERVER_KEYS = frozenset(ClientSettings.model_fields) - {"username", "password"} | {"credentials_file"}


def default_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/tcia-fetch/config.toml``, falling back to ``~/.config``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "tcia-fetch" / "config.toml"


def _read_toml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"{what} not found", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML ({exc})", source=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror})", source=str(path)) from None


def _read_credentials(path: Path) -> tuple[str, SecretStr]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InputError(f"cannot read credentials file ({exc.strerror})", source=str(path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"credentials file is readable by group or others (mode {stat.S_IMODE(mode):o}); run chmod 600",
            source=str(path),
        )
    document = _read_toml(path, what="credentials file")
    unknown = set(document) - {"username", "password"}
    if unknown:
        raise InputError(
            "unknown key (allowed: username, password)", source=str(path), location=sorted(unknown)[0]
        )
    username = document.get("username", GUEST_USERNAME)
    password = document.get("password", "")
    if not isinstance(username, str) or not isinstance(password, str):
        raise InputError("username and password must be strings", source=str(path))
    register_secret(password)
    return username, SecretStr(password)


def load_client_settings(
    *, base_url: str | None, config_file: Path | None, env: Mapping[str, str] | None = None
) -> ClientSettings:
    """Build :class:`ClientSettings` from defaults, config file, environment and flags.

    Args:
        base_url: an explicit ``--base-url`` (highest precedence), or None.
        config_file: an explicit ``--config`` file (must exist), or None for the default
            location (used only when present).
        env: the environment to read; ``os.environ`` when None.

    Raises:
        InputError: an unreadable or invalid file, an unknown key or a bad value; the
            message names the file and key.
    """
    environment = os.environ if env is None else env
    register_environment_secrets(environment)  # whatever is echoed back is scrubbed (redaction.py)
    values: dict[str, Any] = {}
    origins: dict[str, tuple[str, str]] = {}  # key -> (source, location) for error messages
    path = config_file
    if path is None:
        candidate = default_config_path(environment)
        path = candidate if candidate.is_file() else None
    credentials_file: Path | None = None
    if path is not None:
        source = str(path)
        document = _read_toml(path, what="config file")
        server = document.get("server", {})
        if not isinstance(server, dict):
            raise InputError("[server] must be a table", source=source, location="server")
        for key, value in server.items():
            if key not in _SERVER_KEYS:
                raise InputError(
                    f"unknown key (allowed: {', '.join(sorted(_SERVER_KEYS))})",
                    source=source,
                    location=f"server.{key}",
                )
            if key == "credentials_file":
                if not isinstance(value, str):
                    raise InputError(
                        "must be a path string", source=source, location="server.credentials_file"
                    )
                credentials_file = (path.parent / Path(value).expanduser()).resolve()
            else:
                values[key] = value
                origins[key] = (source, f"server.{key}")
    env_base = environment.get("TCIA_FETCH_BASE_URL")
    if env_base:
        values["base_url"] = env_base
        origins["base_url"] = ("environment", "TCIA_FETCH_BASE_URL")
    if base_url is not None:
        values["base_url"] = base_url
        origins["base_url"] = ("command line", "--base-url")
    for key, variable in _ENV_KEYS.items():
        env_value = environment.get(variable)
        if env_value:
            values[key] = env_value
            origins[key] = ("environment", variable)
    env_credentials = environment.get("TCIA_FETCH_CREDENTIALS_FILE")
    if env_credentials:
        credentials_file = Path(env_credentials).expanduser()
    if (
        environment.get("TCIA_FETCH_USERNAME") is not None
        or environment.get("TCIA_FETCH_PASSWORD") is not None
    ):
        values["username"] = environment.get("TCIA_FETCH_USERNAME") or GUEST_USERNAME
        values["password"] = SecretStr(environment.get("TCIA_FETCH_PASSWORD") or "")
    elif credentials_file is not None:
        values["username"], values["password"] = _read_credentials(credentials_file)
    try:
        return ClientSettings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "settings"
        where, location = origins.get(key, ("settings", key))
        raise InputError(error["msg"], source=where, location=location) from None
