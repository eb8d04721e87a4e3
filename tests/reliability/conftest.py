"""Shared fixtures of the reliability campaign tests (sizes for CI come from env vars)."""

from __future__ import annotations

import os

import pytest

from tcia_fetch.campaign.faults import matrix_catalog
from tcia_fetch.testing import Catalog


def env_int(name: str, default: int) -> int:
    """A campaign size from the environment (CI keeps the defaults small)."""
    return int(os.environ.get(name, str(default)))


@pytest.fixture(scope="session")
def small_catalog() -> Catalog:
    """Eight small series in one collection (the fault-matrix catalog)."""
    return matrix_catalog()
