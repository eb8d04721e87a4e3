"""Suite-wide fixtures: every async test runs on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """tcia-fetch runs on asyncio (aiohttp needs it); anyio's plugin runs the async tests."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> None:
    """Secrets registered by one test (a fake password, issued tokens) never scrub another's text."""
    from tcia_fetch.redaction import forget_secrets

    forget_secrets()
