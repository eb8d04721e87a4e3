"""Client settings: defaults, derivations, precedence, credentials, errors naming file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcia_fetch.config import DEFAULT_BASE_URL, ClientSettings, load_client_settings
from tcia_fetch.errors import InputError


def test_defaults() -> None:
    settings = load_client_settings(base_url=None, config_file=None, env={"XDG_CONFIG_HOME": "/nonexistent"})
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.version == "v4"
    assert settings.nlst_base_url == "https://nlst.cancerimagingarchive.net/nbia-api/services/v4/"
    assert settings.token_url == "https://nbia.cancerimagingarchive.net/nbia-api/oauth/token"
    assert settings.user_agent.startswith("tcia-fetch/")
    assert settings.username == "nbia_guest"


def test_legacy_version_inferred_from_base_url() -> None:
    settings = ClientSettings(base_url="https://services.cancerimagingarchive.net/nbia-api/services/v2")
    assert settings.version == "v2"
    assert settings.base_url.endswith("/v2/")
    assert settings.nlst_base_url == "https://nlst.cancerimagingarchive.net/nbia-api/services/v2/"
    assert settings.token_url == "https://services.cancerimagingarchive.net/nbia-api/oauth/token"
    assert ClientSettings(base_url="http://127.0.0.1:1/nbia-api/services/v1/").version == "v1"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_file_then_env_then_flag(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "c.toml",
        '[server]\nbase_url = "http://file.example/nbia-api/services/v4/"\nstall_timeout_s = 7\n'
        "[download]\nx = 1\n",
    )
    from_file = load_client_settings(base_url=None, config_file=config, env={})
    assert from_file.base_url == "http://file.example/nbia-api/services/v4/"
    assert from_file.stall_timeout_s == 7
    env = {"TCIA_FETCH_BASE_URL": "http://env.example/nbia-api/services/v4/"}
    from_env = load_client_settings(base_url=None, config_file=config, env=env)
    assert from_env.base_url == "http://env.example/nbia-api/services/v4/"
    assert from_env.stall_timeout_s == 7
    from_flag = load_client_settings(
        base_url="http://flag.example/nbia-api/services/v4/", config_file=config, env=env
    )
    assert from_flag.base_url == "http://flag.example/nbia-api/services/v4/"


def test_default_config_file_from_xdg(tmp_path: Path) -> None:
    (tmp_path / "tcia-fetch").mkdir()
    _write(tmp_path / "tcia-fetch" / "config.toml", "[server]\nmax_connections = 3\n")
    settings = load_client_settings(base_url=None, config_file=None, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.max_connections == 3


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("[server]\nstall_timeout_s = -1\n", "server.stall_timeout_s"),
        ("[server]\nbogus = 1\n", "server.bogus"),
        ("[server]\npassword = 'x'\n", "server.password"),
        ('[server]\nbase_url = "ftp://x/"\n', "server.base_url"),
        ("[server\n", None),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, location: str | None) -> None:
    config = _write(tmp_path / "bad.toml", text)
    with pytest.raises(InputError) as caught:
        load_client_settings(base_url=None, config_file=config, env={})
    assert str(config) in str(caught.value)
    if location:
        assert location in str(caught.value)


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_client_settings(base_url=None, config_file=tmp_path / "none.toml", env={})


def test_bad_base_url_flag() -> None:
    with pytest.raises(InputError, match="--base-url"):
        load_client_settings(base_url="not a url", config_file=None, env={"XDG_CONFIG_HOME": "/nonexistent"})


def test_credentials_from_env_are_secret() -> None:
    env = {
        "TCIA_FETCH_USERNAME": "alice",
        "TCIA_FETCH_PASSWORD": "hunter2",
        "XDG_CONFIG_HOME": "/nonexistent",
    }
    settings = load_client_settings(base_url=None, config_file=None, env=env)
    assert settings.username == "alice"
    assert settings.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    creds = _write(tmp_path / "creds.toml", 'username = "bob"\npassword = "pw1"\n')
    os.chmod(creds, 0o644)
    env = {"TCIA_FETCH_CREDENTIALS_FILE": str(creds), "XDG_CONFIG_HOME": "/nonexistent"}
    with pytest.raises(InputError, match="chmod 600"):
        load_client_settings(base_url=None, config_file=None, env=env)
    os.chmod(creds, 0o600)
    settings = load_client_settings(base_url=None, config_file=None, env=env)
    assert (settings.username, settings.password.get_secret_value()) == ("bob", "pw1")


def test_credentials_file_named_in_config(tmp_path: Path) -> None:
    creds = _write(tmp_path / "creds.toml", 'username = "carol"\npassword = "pw2"\n')
    os.chmod(creds, 0o600)
    config = _write(tmp_path / "c.toml", '[server]\ncredentials_file = "creds.toml"\n')
    settings = load_client_settings(base_url=None, config_file=config, env={})
    assert settings.username == "carol"


def test_settings_are_frozen_and_strict() -> None:
    with pytest.raises(ValueError):
        ClientSettings(unknown=1)  # type: ignore[call-arg]
    settings = ClientSettings()
    with pytest.raises(ValueError):
        settings.max_connections = 3  # type: ignore[misc]
