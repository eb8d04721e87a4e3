"""Empty queries are explained: the filter to blame, the closest valid values, only the lists needed."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.job.jobfile import parse_job_toml
from tcia_fetch.plan.model import PlannedSeries
from tcia_fetch.plan.planner import Planner
from tcia_fetch.plan.suggest import (
    EmptyQuery,
    EmptyQueryExplainer,
    client_side_note,
    closest,
    combination_count,
    find_culprit,
    unmatched_tables,
)
from tcia_fetch.testing import Catalog, FakeNBIA

FAST = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02, floor_s=0.0)
VALUE_ENDPOINTS = {"getCollectionValues", "getModalityValues", "getBodyPartValues", "getManufacturerValues"}


# --- pure logic ----------------------------------------------------------------------------------


def test_closest_is_case_insensitive_and_keeps_the_server_spelling() -> None:
    assert closest("hnscc", ["HNSCC", "TCGA-HNSC"]) == (True, ())
    assert closest("ABDOMEN_PELVIS", ["abdomen_pelvis "]) == (True, ())
    found, suggestions = closest("HNSCCC", ["HNSCC", "LIDC-IDRI", None, "TCGA-HNSC"])
    assert not found
    assert suggestions[0] == "HNSCC"
    assert closest("XYZZY", ["HNSCC", "LIDC-IDRI"]) == (False, ())


def test_find_culprit_blames_the_first_bad_filter_in_check_order() -> None:
    lists = {"collection": ["HNSCC", "LIDC-IDRI"], "modality": ["CT", "PT"]}
    culprit = find_culprit({"collection": "HNSCCC", "modality": "MRI"}, lists)
    assert culprit is not None and culprit.name == "collection" and culprit.suggestions == ("HNSCC",)
    culprit = find_culprit({"collection": "hnscc", "modality": "XA"}, lists)
    assert culprit is not None and culprit.name == "modality"
    assert culprit.scope == {"collection": "hnscc"}
    assert culprit.suggestions == () and culprit.available == ("CT", "PT")
    assert find_culprit({"collection": "HNSCC", "modality": "ct"}, lists) is None


def test_a_wholly_empty_query_table_blocks_but_one_empty_combination_does_not() -> None:
    def finding(table: int, collection: str, combinations: int) -> EmptyQuery:
        return EmptyQuery(
            f"query[{table}]", {"collection": collection}, "m", table=table, combinations=combinations
        )

    partial = [finding(0, "A", 2)]  # one of two combinations empty: legitimate
    assert unmatched_tables(partial) == []
    whole = [finding(1, "A", 2), finding(1, "B", 2)]
    assert unmatched_tables(partial + whole) == [whole[0]]
    loose = EmptyQuery("tf.series", {"collection": "X"}, "m")
    assert unmatched_tables([loose]) == [loose]


def test_combination_count_matches_the_expansion() -> None:
    job = parse_job_toml(
        '[[query]]\ncollection = ["A", "B", "C"]\nmodality = ["CT", "MR"]\nmodel = "X"\n',
        source="job.toml",
        base_dir=Path("."),
    )
    [query] = job.queries
    assert combination_count(query) == len(query.server_filter_sets()) == 6


def test_client_side_note_names_what_excluded_the_rows() -> None:
    text = client_side_note(57, {"image_count": 57, "description": 0})
    assert (
        text
        == "the server matched 57 series, but the client-side filters kept none (image_count excluded 57)"
    )


# --- against the fake server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.generate(seed=5, collections=3, patients_per_collection=2, series_per_study=2)


def _plan(catalog: Catalog, text: str) -> tuple[list[PlannedSeries], list[EmptyQuery], list[str]]:
    job = parse_job_toml(text, source="job.toml", base_dir=Path("."))
    items: list[PlannedSeries] = []
    found: list[EmptyQuery] = []
    endpoints: list[str] = []

    async def main() -> None:
        async with FakeNBIA(catalog).serve() as server, NBIAClient(base_url=server.base_url) as client:
            planner = Planner(client, job, retry_policy=FAST, clock=SystemClock())

            async def emit(item: PlannedSeries) -> None:
                items.append(item)

            summary = await planner.run(emit)
            found.extend(summary.empty_queries)
            endpoints.extend(record.endpoint for record in server.request_log)

    anyio.run(main)
    return items, found, endpoints


def test_a_collection_typo_is_named_with_the_closest_collection(catalog: Catalog) -> None:
    name = catalog.series[0].collection
    items, found, endpoints = _plan(catalog, f'[[query]]\ncollection = "{name}X"\nmodality = "CT"\n')
    assert items == []
    [finding] = found
    assert finding.culprit == "collection" and finding.suggestions[0] == name
    assert f"collection '{name}X' matched no series; did you mean '{name}'" in finding.message
    assert finding.message.startswith("query[0] (collection = ")
    # Only the list that was needed: the collection check failed, so no modality list was fetched.
    assert [e for e in endpoints if e in VALUE_ENDPOINTS] == ["getCollectionValues"]
    assert unmatched_tables(found) == [finding]


def test_a_modality_the_collection_lacks_lists_what_it_has(catalog: Catalog) -> None:
    name = catalog.series[0].collection
    has = sorted({e.modality.upper() for e in catalog.series if e.collection == name and e.modality})
    lacks = next(m for m in ("XA", "RTDOSE", "OT", "DX") if m not in has)
    _, found, endpoints = _plan(catalog, f'[[query]]\ncollection = "{name.lower()}"\nmodality = "{lacks}"\n')
    [finding] = found
    assert finding.culprit == "modality" and finding.value == lacks
    assert f"in collection '{name.lower()}'" in finding.message
    for modality in has:
        assert modality in finding.message
    assert [e for e in endpoints if e in VALUE_ENDPOINTS] == ["getCollectionValues", "getModalityValues"]


def test_empty_combinations_of_a_matching_table_are_notes_not_errors(catalog: Catalog) -> None:
    name = catalog.series[0].collection
    modality = catalog.series[0].modality
    items, found, _ = _plan(
        catalog, f'[[query]]\ncollection = ["{name}", "{name}Z"]\nmodality = "{modality}"\n'
    )
    assert items
    [finding] = found
    assert finding.value == f"{name}Z"
    assert unmatched_tables(found) == []


def test_client_side_filters_that_keep_nothing_are_reported_without_value_lists(catalog: Catalog) -> None:
    name = catalog.series[0].collection
    count = sum(1 for e in catalog.series if e.collection == name)
    _, found, endpoints = _plan(
        catalog, f'[[query]]\ncollection = "{name}"\nimage_count = {{ min = 100000 }}\n'
    )
    [finding] = found
    assert finding.server_rows == count
    assert f"image_count excluded {count}" in finding.message
    assert not VALUE_ENDPOINTS & set(endpoints)


def test_a_matching_query_asks_for_no_value_list(catalog: Catalog) -> None:
    name = catalog.series[0].collection
    items, found, endpoints = _plan(catalog, f'[[query]]\ncollection = "{name}"\n')
    assert items and found == []
    assert not VALUE_ENDPOINTS & set(endpoints)


def test_the_explainer_caches_lists_and_never_fails_on_a_source_without_them() -> None:
    class Bare:
        pass

    async def main() -> EmptyQuery:
        return await EmptyQueryExplainer(Bare()).explain("tf.series", {"collection": "X"})

    finding = anyio.run(main)
    assert finding.culprit is None
    assert finding.message == "tf.series (collection = X) matched no series: no series has these values"
