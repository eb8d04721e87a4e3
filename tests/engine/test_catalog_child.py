"""The Parquet catalog's child process (engine/run.py ``_CatalogChild``): it runs beside metadata.csv,
says why when it fails, and is never left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.engine.run import _CatalogChild
from tcia_fetch.errors import DestinationError
from tcia_fetch.store.destination import Destination


def test_a_failing_child_is_a_destination_error_with_its_own_words(tmp_path: Path) -> None:
    # A plain file where the destination should be: `tcia-fetch catalog` refuses it and says so.
    target = tmp_path / "not-a-directory"
    target.write_text("x")
    child = _CatalogChild(Destination(target))
    with pytest.raises(DestinationError, match="cannot write the Parquet catalog of") as caught:
        child.wait()
    assert str(target) in caught.value.message and len(caught.value.message) > len(str(target)) + 40


def test_a_stopped_child_is_killed_and_reaped(tmp_path: Path) -> None:
    # metadata.csv failed while the child was starting: it must not outlive the books.
    child = _CatalogChild(Destination(tmp_path))
    child.stop()
    assert child._process.returncode is not None
