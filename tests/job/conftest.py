"""Fixtures for the job-input tests: the real manifests and a helper to write input files."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real manifests copied unchanged from public repositories (see manifests/README.md).
MANIFEST_DIR = Path(__file__).parent / "manifests"


@pytest.fixture
def manifest_dir() -> Path:
    return MANIFEST_DIR
