"""Suite-wide fixtures: every async test runs on asyncio through anyio's pytest plugin; S3 tests
share one moto server per test process and get a bucket of their own."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tcia_fetch.testing.s3 import MotoS3

_BUCKET_NUMBERS = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    """tcia-fetch runs on asyncio (aiohttp needs it); anyio's plugin runs the async tests."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> None:
    """Secrets registered by one test (a fake password, issued tokens) never scrub another's text."""
    from tcia_fetch.redaction import forget_secrets

    forget_secrets()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server on loopback, started here, for every S3 test of this process."""
    from tcia_fetch.testing.s3 import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket of this test's own, with the AWS environment (canary credentials, moto's
    endpoint, a private work dir) pointing at it."""
    from tcia_fetch.testing.s3 import s3_env

    name = f"test-{os.getpid()}-{next(_BUCKET_NUMBERS)}"
    moto_s3.client().create_bucket(Bucket=name)
    for key, value in s3_env(moto_s3.endpoint, tmp_path / "work", tmp_path).items():
        monkeypatch.setenv(key, value)
    return name
