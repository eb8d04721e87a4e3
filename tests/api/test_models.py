"""Row models: v4 and legacy column names, verbatim server_dict, coercion failures."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from tcia_fetch.api.models import (
    SeriesMetadataRow,
    SeriesRow,
    SeriesSize,
    StudyRow,
    ValueCount,
    rows_to_models,
)
from tcia_fetch.api.parse import parse_csv_rows
from tcia_fetch.errors import ResponseFormatError

V4_SERIES = {
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.2135.6389.861085683843003228352649673146",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.2135.6389.101337736148606617569659173510",
    "Modality": "MG",
    "SeriesDescription": "DBT slices",
    "BodyPartExamined": "BREAST",
    "Collection": "VICTRE",
    "Site": "FDA",
    "PatientID": "1215936303",
    "PatientSex": "F",
    "Manufacturer": "VICTRE",
    "ImageCount": 57,
    "MaxSubmissionTimestamp": "02-25-2019",
    "LicenseName": "Creative Commons Attribution 3.0 Unported License",
    "LicenseURI": "http://creativecommons.org/licenses/by/3.0/",
    "DataDescriptionURI": "https://doi.org/10.7937/TCIA.2019.ho23nxaw",
    "FileSize": 165975906,
    "ReleasedStatus": "Yes",
    "DateReleased": "03-08-2019",
    "StudyDesc": "DBT Reconstructed Volume",
    "StudyDate": "01-06-2018",
    "Authorized": 1,
}

V2_SERIES = {
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.5168.1900.104193299251798317056218297018",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.5168.1900.154535988064062152660648619556",
    "Modality": "MR",
    "SeriesDate": "2003-12-12 00:00:00.0",
    "SeriesNumber": 2,
    "Collection": "Soft-tissue-Sarcoma",
    "PatientID": "STS_010",
    "ImageCount": 48,
    "TimeStamp": "2015-05-27 17:12:21.0",
    "CollectionURI": "https://doi.org/10.7937/K9/TCIA.2015.7GO2GSKS",
    "FileSize": 25273786,
    "StudyDate": "2003-12-12 00:00:00.0",
}

METADATA_CSV = (
    b'"PatientID","PatientName","PatientSex","EthnicGroup","Phantom","SpeciesCode","SpeciesDescription",'
    b'"StudyInstanceUID","StudyDate","StudyDesc","AdmittingDiagnosisDescription","StudyID","PatientAge",'
    b'"LongitudinalTemporalEventType","LongitudinalTemporalOffsetFromEvent","SeriesInstanceUID","Collection",'
    b'"Site","Modality","ProtocolName","SeriesDate","SeriesDescription","BodyPartExamined","SeriesNumber",'
    b'"AnnotationsFlag","Manufacturer","ManufacturerModelName","PixelSpacing(mm)-Row","SliceThickness(mm)",'
    b'"SoftwareVersions","ImageCount","MaxSubmissionTimestamp","LicenseName","LicenseURI","DataDescriptionURI",'
    b'"FileSize","ReleasedStatus","DateReleased","ThirdPartyAnalysis","Authorized"\n'
    b'"100_HM10395","P100","M","","NO","337915000","Homo sapiens",'
    b'"1.3.6.1.4.1.14519.5.2.1.6834.5010.335014117706890137582032169351","09-15-1997","p4","","","000Y","","",'
    b'"1.3.6.1.4.1.14519.5.2.1.6834.5010.322628904903035357840500590726","4D-Lung","VCU","CT",'
    b'"5.1 4DCT & ITV FB + 4D + INSP/EXP","09-15-1997","P4^P100^S100^I0, Gated, 0.0%","LUNG","500.000000","",'
    b'"Varian Imaging Laboratories, Switzerland","Trilogy Cone Beam CT","0.878906","3.000000",'
    b'"LightSpeedverrel",'
    b'"50","07-20-2015","Creative Commons Attribution 3.0 Unported License",'
    b'"http://creativecommons.org/licenses/by/3.0/","https://doi.org/10.7937/K9/TCIA.2016.ELN8YGLE","26405888",'
    b'"Yes","10-19-2016","","1"\n'
)


def test_v4_series_row_fields() -> None:
    row = SeriesRow.from_server(V4_SERIES)
    assert row.series_uid == V4_SERIES["SeriesInstanceUID"]
    assert row.study_uid == V4_SERIES["StudyInstanceUID"]
    assert row.collection == "VICTRE"
    assert row.patient_id == "1215936303"
    assert row.body_part == "BREAST"
    assert row.image_count == 57
    assert row.file_size == 165975906
    assert row.study_date == dt.date(2018, 1, 6)
    assert row.date_released == dt.date(2019, 3, 8)
    assert row.study_description == "DBT Reconstructed Volume"
    assert row.data_description_uri == "https://doi.org/10.7937/TCIA.2019.ho23nxaw"
    assert row.series_date is None and row.series_number is None and row.protocol_name is None


def test_server_dict_is_the_server_row_verbatim() -> None:
    row = SeriesRow.from_server({**V4_SERIES, "NewColumn": "kept", "ProtocolName": None})
    assert row.server_dict() == {**V4_SERIES, "NewColumn": "kept"}
    assert row.model_extra == {"NewColumn": "kept"}


def test_legacy_v2_series_row_maps_renamed_columns() -> None:
    row = SeriesRow.from_server(V2_SERIES)
    assert row.series_date == dt.date(2003, 12, 12)
    assert row.series_number == "2"
    assert row.data_description_uri == "https://doi.org/10.7937/K9/TCIA.2015.7GO2GSKS"
    assert row.max_submission_timestamp == dt.date(2015, 5, 27)
    assert row.server_dict() == V2_SERIES  # legacy spelling kept for output


def test_row_built_by_name_writes_server_form() -> None:
    row = SeriesRow(
        series_uid="1.2.3", image_count=4, study_date=dt.date(2020, 2, 3), series_number="500.000000"
    )
    assert row.server_dict() == {
        "SeriesInstanceUID": "1.2.3",
        "SeriesNumber": "500.000000",
        "ImageCount": 4,
        "StudyDate": "02-03-2020",
    }


def test_rows_are_frozen() -> None:
    row = SeriesRow.from_server(V4_SERIES)
    with pytest.raises(ValidationError):
        row.image_count = 3  # type: ignore[misc]


def test_metadata_csv_row_has_all_forty_columns() -> None:
    [raw] = parse_csv_rows(METADATA_CSV)
    row = SeriesMetadataRow.from_server(raw)
    assert len(SeriesMetadataRow.model_fields) == 40
    assert row.series_number == "500.000000"
    assert row.image_count == 50
    assert row.file_size == 26405888
    assert row.study_id is None and row.ethnic_group is None  # "" means omitted
    assert row.series_description == "P4^P100^S100^I0, Gated, 0.0%"
    assert row.manufacturer == "Varian Imaging Laboratories, Switzerland"
    assert row.pixel_spacing_row_mm == "0.878906"
    assert row.patient_name == "P100"
    assert row.study_date == dt.date(1997, 9, 15)
    assert row.server_dict()["SeriesNumber"] == "500.000000"
    assert "StudyID" not in row.server_dict()


def test_series_row_has_thirty_v4_columns() -> None:
    assert len(SeriesRow.model_fields) == 30


@pytest.mark.parametrize(
    "bad", [{"FileSize": -1}, {"ImageCount": "many"}, {"StudyDate": "2018/01/06"}, {"FileSize": "1.5"}]
)
def test_impossible_values_are_format_errors_naming_the_column(bad: dict[str, object]) -> None:
    with pytest.raises(ResponseFormatError, match=next(iter(bad))):
        SeriesRow.from_server({**V4_SERIES, **bad})


def test_series_size_coerces_numeric_strings_and_requires_both_fields() -> None:
    size = SeriesSize.from_server({"TotalSizeInBytes": "26405888.0", "ObjectCount": "50"})
    assert (size.total_size_bytes, size.object_count) == (26405888, 50)
    with pytest.raises(ResponseFormatError):
        SeriesSize.from_server({"ObjectCount": 3})


def test_value_counts_read_each_endpoint_key() -> None:
    rows: list[dict[str, object]] = [
        {"Collection": "LIDC-IDRI", "Count": 1010, "Authorized": 1},
        {"BodyPart": "CHEST", "Count": "12"},
        {"Count": 3},
    ]
    counts = rows_to_models(ValueCount, rows)
    assert [(c.value, c.count) for c in counts] == [("LIDC-IDRI", 1010), ("CHEST", 12), (None, 3)]
    assert counts[1].server_dict() == {"BodyPart": "CHEST", "Count": "12"}


def test_study_row() -> None:
    row = StudyRow.from_server(
        {
            "StudyInstanceUID": "1.2.3",
            "StudyDate": "2016-07-21 00:00:00.0",
            "SeriesCount": 1,
            "StudyID": "DDSM",
        }
    )
    assert (row.study_uid, row.study_date, row.series_count, row.study_id) == (
        "1.2.3",
        dt.date(2016, 7, 21),
        1,
        "DDSM",
    )


def test_series_row_without_its_uid_is_a_format_error() -> None:
    with pytest.raises(ResponseFormatError, match="SeriesInstanceUID"):
        SeriesRow.from_server({k: v for k, v in V4_SERIES.items() if k != "SeriesInstanceUID"})
