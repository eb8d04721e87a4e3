"""Where a run's server comes from: --base-url > TCIA_FETCH_BASE_URL > job [server] > config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.engine.run import RunOptions, resolve_client_settings
from tcia_fetch.job.jobfile import load_job

CONFIG_URL = "https://config.example.org/nbia-api/services/v4/"
JOB_URL = "https://job.example.org/nbia-api/services/v4/"
ENV_URL = "https://env.example.org/nbia-api/services/v4/"
FLAG_URL = "https://flag.example.org/nbia-api/services/v4/"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nbase_url = "{CONFIG_URL}"\n')
    return path


def job(tmp_path: Path, *, with_server: bool) -> Path:
    path = tmp_path / "job.toml"
    server = f'[server]\nbase_url = "{JOB_URL}"\n\n' if with_server else ""
    path.write_text(server + '[series]\nuids = ["1.2.3.4"]\n')
    return path


@pytest.mark.parametrize(
    ("with_server", "env", "flag", "expected"),
    [
        (False, {}, None, CONFIG_URL),
        (True, {}, None, JOB_URL),
        (True, {"TCIA_FETCH_BASE_URL": ENV_URL}, None, ENV_URL),
        (True, {"TCIA_FETCH_BASE_URL": ENV_URL}, FLAG_URL, FLAG_URL),
    ],
)
def test_precedence(
    tmp_path: Path, config: Path, with_server: bool, env: dict[str, str], flag: str | None, expected: str
) -> None:
    spec = load_job(job(tmp_path, with_server=with_server))
    settings = resolve_client_settings(spec, RunOptions(base_url=flag, config_file=config), env)
    assert settings.base_url == expected
