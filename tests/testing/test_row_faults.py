"""The fake server's row faults (issue 14): BAD_UID_ROWS and ROW_VALUE shape series answers."""

from __future__ import annotations

import aiohttp
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule
from tcia_fetch.testing.__main__ import parse_faults

pytestmark = pytest.mark.anyio


async def test_bad_uid_rows_are_added_and_one_series_column_rewritten() -> None:
    catalog = Catalog.generate(seed=3, collections=1, patients_per_collection=1, series_per_study=2)
    target = catalog.series[0].uid
    rules = [
        FaultRule(FaultKind.BAD_UID_ROWS, times=None, uids=("../evil", "")),
        FaultRule(
            FaultKind.ROW_VALUE, series_uid=target, times=None, column="Collection", value="metadata.csv"
        ),
    ]
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    async with fake.serve() as server, aiohttp.ClientSession() as http:
        async with http.get(server.base_url + "getSeries") as response:
            rows = await response.json(content_type=None)
        form = {"list": target, "format": "json"}
        async with http.post(server.base_url + "getSeriesMetadata", data=form) as response:
            metadata = await response.json(content_type=None)
    uids = [row["SeriesInstanceUID"] for row in rows]
    assert uids[-2:] == ["../evil", ""]
    assert sorted(uids[:-2]) == sorted(entry.uid for entry in catalog.series)
    assert {row["SeriesInstanceUID"]: row["Collection"] for row in rows}[target] == "metadata.csv"
    assert [row["Collection"] for row in metadata if row["SeriesInstanceUID"] == target] == ["metadata.csv"]


def test_row_faults_parse_from_the_serve_command_line() -> None:
    plan = parse_faults(["BAD_UID_ROWS,uids=../evil,times=none", "ROW_VALUE:1.2.3,value=many"], seed=0)
    bad, value = plan.rules
    assert (bad.kind, bad.times, bad.params["uids"]) == (FaultKind.BAD_UID_ROWS, None, "../evil")
    assert (value.series_uid, value.params["column"], value.params["value"]) == (
        "1.2.3",
        "ImageCount",
        "many",
    )
