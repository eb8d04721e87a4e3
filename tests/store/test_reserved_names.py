"""Reserved root names and colliding descriptive paths (issue 14, items 5 and 9)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tcia_fetch.store.catalog import CATALOG_NAME, INSTANCES_NAME
from tcia_fetch.store.destination import STATE_DIR_NAME, Destination
from tcia_fetch.store.layout import MAX_COMPONENT_BYTES, RESERVED_ROOT_NAMES, disambiguated, parse_layout
from tcia_fetch.store.objhome import ROOT_OUTPUTS
from tcia_fetch.store.seriespath import SeriesPaths

ROW = {
    "Collection": "HNSCC",
    "PatientID": "HN-001",
    "StudyInstanceUID": "1.2.3.4.77777",
    "StudyDate": "01-02-2003",
    "SeriesNumber": "2",
    "SeriesDescription": "CT",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.10.1.77712345",
}
TWIN = {**ROW, "SeriesInstanceUID": "1.2.826.0.1.3680043.10.2.88812345"}


def test_every_name_written_at_the_root_is_reserved() -> None:
    written = {STATE_DIR_NAME, CATALOG_NAME, INSTANCES_NAME, "metadata.csv", *ROOT_OUTPUTS}
    assert written <= RESERVED_ROOT_NAMES


def test_a_collection_named_like_our_files_is_renamed_in_every_layout() -> None:
    for name in ("metadata.csv", "METADATA.CSV", "catalog.parquet", "Instances.Parquet"):
        row = {**ROW, "Collection": name}
        for layout in ("classic", "descriptive", "{Collection}/{SeriesInstanceUID}"):
            assert parse_layout(layout).render(row).parts[0] == "_" + name
    # only the root level is ours; deeper levels and other names stay as they are
    assert parse_layout("classic").render({**ROW, "PatientID": "metadata.csv"}).parts[1] == "metadata.csv"
    assert (
        parse_layout("classic").render({**ROW, "Collection": "metadata.csv.bak"}).parts[0]
        == "metadata.csv.bak"
    )


def test_disambiguated_is_deterministic_and_stays_one_safe_component() -> None:
    path = PurePosixPath("C/P/S/" + "x" * MAX_COMPONENT_BYTES)
    first = disambiguated(path, ROW["SeriesInstanceUID"])
    assert first == disambiguated(path, ROW["SeriesInstanceUID"])
    assert first != disambiguated(path, TWIN["SeriesInstanceUID"])
    assert first.parent == path.parent and len(first.name.encode()) <= MAX_COMPONENT_BYTES
    assert "~" in first.name


def _publish(destination: Destination, paths: SeriesPaths, uid: str, row: dict[str, str]) -> PurePosixPath:
    relative = paths.choose(uid, row)
    staging = destination.new_staging(uid)
    (staging / "1.dcm").write_bytes(uid.encode())
    destination.publish(staging, relative)
    paths.release(relative)
    return relative


def test_descriptive_twins_both_publish_and_keep_their_paths(tmp_path: Path) -> None:
    destination = Destination(tmp_path / "out")
    destination.prepare()
    layout = parse_layout("descriptive")
    assert layout.render(ROW) == layout.render(TWIN)  # the collision this is about
    paths = SeriesPaths("descriptive", destination)
    a = _publish(destination, paths, ROW["SeriesInstanceUID"], ROW)
    b = _publish(destination, paths, TWIN["SeriesInstanceUID"], TWIN)
    assert a == layout.render(ROW) and b == disambiguated(a, TWIN["SeriesInstanceUID"])
    # in flight at once in one process: the second sees the first's reservation
    fresh = SeriesPaths("descriptive", Destination(tmp_path / "other"))
    one = fresh.choose(ROW["SeriesInstanceUID"], ROW)
    assert fresh.choose(TWIN["SeriesInstanceUID"], TWIN) == disambiguated(one, TWIN["SeriesInstanceUID"])


def test_a_recorded_path_wins_and_unique_layouts_are_never_renamed(tmp_path: Path) -> None:
    destination = Destination(tmp_path / "out")
    destination.prepare()
    uid = ROW["SeriesInstanceUID"]
    recorded = SeriesPaths("descriptive", destination, {uid: "old/place/of/it"})
    assert recorded.choose(uid, ROW) == PurePosixPath("old/place/of/it")
    classic = SeriesPaths("classic", destination)
    taken = _publish(destination, classic, uid, ROW)
    # classic paths end in the whole UID: something there is not another series, and is refused
    assert classic.choose(uid, ROW) == taken


def test_a_recorded_path_under_a_reserved_name_is_not_reused(tmp_path: Path) -> None:
    """A series an older version put in metadata.csv/ is repaired into _metadata.csv/."""
    uid = ROW["SeriesInstanceUID"]
    row = {**ROW, "Collection": "metadata.csv"}
    paths = SeriesPaths("classic", Destination(tmp_path / "out"), {uid: f"metadata.csv/HN-001/1.2.3/{uid}"})
    assert paths.choose(uid, row).parts[0] == "_metadata.csv"
