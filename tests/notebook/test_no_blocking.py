"""The async twins never block the caller's event loop (settings, job files, pandas: worker threads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

import tcia_fetch as tf
from tcia_fetch.testing import Catalog

from ..e2e.fixtures import fake_server_process

pytestmark = pytest.mark.anyio

SIZING = ["--seed", "8", "--collections", "1", "--patients-per-collection", "1", "--series-per-study", "2"]


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[str]:
    with fake_server_process(tmp_path, SIZING) as url:  # its own process: only our calls are watched
        yield url


async def test_async_twins_make_no_blocking_call_on_the_loop(tmp_path: Path, remote: str) -> None:
    catalog = Catalog.generate(seed=8, collections=1, patients_per_collection=1, series_per_study=2)
    name = catalog.series[0].collection
    manifest = tmp_path / "one.tcia"
    manifest.write_text("ListOfSeriesToDownload=\n" + catalog.series[0].uid + "\n")
    with blockbuster_ctx():
        frame = await tf.series_async(collection=name, base_url=remote)
        sizes = await tf.series_size_async(frame, base_url=remote)
        with pytest.warns(tf.EmptyResultWarning, match="did you mean"):
            await tf.modalities_async(name + "x", base_url=remote)
        report = await tf.download_async(frame, out=tmp_path / "out", progress=False, base_url=remote)
        again = await tf.download_async(manifest, out=tmp_path / "out", progress=False, base_url=remote)
    assert len(frame) == len(sizes) == 2
    assert report.done == 2 and report.ok
    assert again.skipped == 1 and again.ok
