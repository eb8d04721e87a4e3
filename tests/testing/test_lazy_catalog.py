"""LazyCatalog: 600,000 series served without building them, stable per index, O(1) by UID."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.testing import FakeNBIA, LazyCatalog
from tcia_fetch.testing._lazy import REAL_SIZE_QUANTILES

SIZE = 600_000


def test_a_600k_catalog_is_derived_on_demand_and_stable() -> None:
    started = time.process_time()
    catalog = LazyCatalog(count=SIZE, seed=7)
    last = catalog.series[-1]
    assert time.process_time() - started < 5  # nothing was built for the 599,999 others
    assert len(catalog) == len(catalog.series) == SIZE
    assert last.uid == catalog.uid(SIZE - 1)
    again = catalog.get(last.uid)
    assert again is not None and again.series_row() == last.series_row()
    assert catalog.get(catalog.uid(SIZE)) is None
    assert catalog.get(catalog.uid(SIZE - 1) + "0") is None and catalog.get("1.2.3") is None
    assert catalog.get(catalog.uid(0).replace(".0", ".00")) is None
    assert [entry.uid for entry in catalog.series[10:13]] == [catalog.uid(i) for i in (10, 11, 12)]
    assert catalog.series[100].study_uid != catalog.series[99].study_uid  # 100 series per study
    assert LazyCatalog(count=SIZE, seed=8).uid(3) != catalog.uid(3)


def test_real_sizes_follow_the_committed_quantile_table() -> None:
    catalog = LazyCatalog(count=2_000, seed=1, sizes="real")
    counts = [catalog.entry(index).instance_count for index in range(0, 2_000, 10)]
    allowed = {count for count, _ in REAL_SIZE_QUANTILES}
    assert set(counts) <= allowed
    assert sum(1 for count in counts if count == 1) > len(counts) // 2  # most real series: one instance
    assert max(counts) > 50  # and some CT/MR stacks


@pytest.mark.anyio
async def test_the_engine_fetches_from_the_far_end_of_a_lazy_600k_catalog(tmp_path: Path) -> None:
    catalog = LazyCatalog(count=SIZE, seed=5)
    uids = [catalog.uid(SIZE - 1), catalog.uid(SIZE // 2), catalog.uid(0)]
    job = tmp_path / "job.tcia"
    job.write_text("ListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
    async with FakeNBIA(catalog).serve() as server:
        report = await fetch(job, RunOptions(out=tmp_path / "out", base_url=server.base_url))
    assert (report.done, report.failed, report.exit_code) == (3, 0, 0)
