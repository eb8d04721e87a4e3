"""The synthetic catalog: determinism, exact sizes, real DICOM whose tags agree with the rows, names."""

from __future__ import annotations

import hashlib
import io
import zlib

import pydicom
import pytest

from tcia_fetch.testing import Catalog
from tcia_fetch.uid import is_valid_uid
from tests.testing._helpers import with_runs


def test_same_seed_gives_identical_uids_rows_and_bytes() -> None:
    first = Catalog.generate(seed=11)
    second = Catalog.generate(seed=11)
    assert [entry.uid for entry in first.series] == [entry.uid for entry in second.series]
    assert [entry.series_row() for entry in first.series] == [entry.series_row() for entry in second.series]
    for left, right in zip(first.series, second.series, strict=True):
        left_bytes = [item.read_bytes() for item in left.instance_files()]
        right_bytes = [item.read_bytes() for item in right.instance_files()]
        assert left_bytes == right_bytes


def test_different_seeds_give_different_catalogs() -> None:
    assert Catalog.generate(seed=1).series[0].uid != Catalog.generate(seed=2).series[0].uid


def test_sizes_add_up_exactly(catalog: Catalog) -> None:
    for entry in catalog.series:
        files = entry.instance_files()
        on_disk = sum(len(item.read_bytes()) for item in files)
        assert (
            on_disk == entry.total_bytes == entry.series_row()["FileSize"] == entry.metadata_row()["FileSize"]
        )
        assert entry.size_row() == {"TotalSizeInBytes": on_disk, "ObjectCount": len(files)}
        assert len(files) == entry.instance_count == entry.series_row()["ImageCount"]


def test_instances_are_dicom_whose_tags_agree_with_the_rows(catalog: Catalog) -> None:
    for entry in catalog.series:
        row = entry.series_row()
        for item in entry.instance_files():
            data = item.read_bytes()
            assert data[128:132] == b"DICM"
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert ds.SeriesInstanceUID == entry.uid == row["SeriesInstanceUID"]
            assert ds.StudyInstanceUID == row["StudyInstanceUID"]
            assert ds.PatientID == row["PatientID"]
            assert ds.Modality == row["Modality"]
            assert ds.SOPInstanceUID == item.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
            assert is_valid_uid(ds.SOPInstanceUID)
            assert ds.InstanceNumber == item.instance_number
            assert ds.AcquisitionNumber == item.acquisition_number
            assert ds.get("BodyPartExamined") == (
                None if entry.body_part is None else entry.body_part.strip()
            )
            assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
            assert hashlib.md5(data).hexdigest() == item.md5


def test_catalog_carries_the_odd_values_real_archives_have(catalog: Catalog) -> None:
    body_parts = [entry.body_part for entry in catalog.series]
    assert None in body_parts
    assert any(value is not None and value != value.rstrip() for value in body_parts)
    assert any(value is not None and value != value.upper() for value in body_parts)
    assert any("BodyPartExamined" not in entry.series_row() for entry in catalog.series)
    assert {row["Authorized"] for row in (entry.series_row() for entry in catalog.series)} == {1}


def test_database_order_is_not_instance_order_and_names_follow_runs(catalog: Catalog) -> None:
    entry = with_runs(catalog)
    db_files = entry.instance_files()
    assert [item.db_name for item in db_files] == [
        f"{index:08d}.dcm" for index in range(1, len(db_files) + 1)
    ]
    assert [item.instance_number for item in db_files] != sorted(item.instance_number for item in db_files)
    by_instance = sorted(db_files, key=lambda item: item.instance_number)
    runs = [item.new_name.split("-")[0] for item in by_instance]
    assert runs[0] == "1" and runs[-1] == "2"
    first_of_second_run = runs.index("2")
    assert by_instance[first_of_second_run].new_name.startswith("2-1") or by_instance[
        first_of_second_run
    ].new_name.startswith("2-0")


def test_new_names_are_zero_padded_to_the_longest_run() -> None:
    catalog = Catalog.generate(
        seed=3,
        collections=1,
        patients_per_collection=1,
        series_per_study=1,
        instances_per_series=(12, 12),
        instance_bytes=(1_000, 1_000),
    )
    names = [item.new_name for item in catalog.series[0].instances()]
    assert names[0] == "1-01.dcm" and names[-1] == "1-12.dcm"


def test_extra_series_uids_join_the_catalog() -> None:
    extra = ["1.2.246.352.71.2.494841863751.4253616.20190218155318", "2.25.1234"]
    catalog = Catalog.generate(seed=5, extra_series_uids=extra)
    for uid in extra:
        entry = catalog.get(uid)
        assert entry is not None
        assert entry.instance_files()[0].read_bytes()[128:132] == b"DICM"
    assert catalog.get("9.9.9") is None


def test_pixel_data_compresses_like_images() -> None:
    catalog = Catalog.generate(
        seed=9,
        collections=1,
        patients_per_collection=1,
        series_per_study=1,
        instances_per_series=(2, 2),
        instance_bytes=(400_000, 400_000),
    )
    data = catalog.series[0].instance_files()[0].read_bytes()
    ratio = len(zlib.compress(data, 6)) / len(data)
    assert 0.25 < ratio < 0.6


def test_large_instances_are_supported_without_building_files() -> None:
    catalog = Catalog.generate(
        seed=2,
        collections=1,
        patients_per_collection=1,
        series_per_study=1,
        instances_per_series=(200, 200),
        instance_bytes=(5_000_000, 5_000_000),
    )
    entry = catalog.series[0]
    assert entry.instance_count == 200
    assert abs(entry.instance_size - 5_000_000) < 5_000
    assert entry.total_bytes == 200 * entry.instance_size


def test_patched_layout_headers_equal_what_pydicom_writes() -> None:
    from tcia_fetch.testing._dicom import build_template_with_pydicom

    catalog = Catalog.generate(seed=21, collections=3, patients_per_collection=3, series_per_study=3)
    for entry in catalog.series:
        assert entry.template() == build_template_with_pydicom(entry.header_fields())


def test_many_collections_keep_patient_ids_distinct() -> None:
    catalog = Catalog.generate(seed=1, collections=10, patients_per_collection=1, series_per_study=1)
    assert len(set(catalog.collections)) == 10
    assert len({entry.patient_id for entry in catalog.series}) == 10


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        Catalog.generate(collections=0)
    with pytest.raises(ValueError):
        Catalog.generate(instances_per_series=(0, 2))
