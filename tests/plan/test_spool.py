"""The row spool: a query answer kept in order, in memory first and then in a compressed temp file."""

from __future__ import annotations

from tcia_fetch.plan.spool import RowSpool


def fill(spool: RowSpool, count: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"SeriesInstanceUID": f"1.2.{n}", "ImageCount": n % 7, "SeriesDescription": "é \u202e x"}
        for n in range(count)
    ]
    for row in rows:
        spool.add(row)
        if spool.should_spill:
            spool.spill()
    spool.finish()
    return rows


def drain(spool: RowSpool) -> list[object]:
    out: list[object] = []
    while batch := spool.read_batch():
        out.extend(batch)
    return out


def test_a_small_answer_stays_in_memory() -> None:
    spool = RowSpool(memory_rows=100, spill_rows=10)
    rows = fill(spool, 50)
    assert not spool.spilled
    assert drain(spool) == rows
    spool.close()


def test_a_large_answer_goes_to_disk_in_order_and_comes_back_whole() -> None:
    spool = RowSpool(memory_rows=8, spill_rows=16)
    rows = fill(spool, 1000)
    assert spool.spilled and spool.rows == 1000
    assert drain(spool) == rows  # order, unicode and numbers survive the round trip
    assert spool.read_batch() == []
    spool.close()


def test_reset_forgets_a_partial_answer_for_the_retry() -> None:
    spool = RowSpool(memory_rows=4, spill_rows=4)
    fill(spool, 30)
    spool.reset()
    rows = fill(spool, 6)
    assert drain(spool) == rows
    spool.close()
