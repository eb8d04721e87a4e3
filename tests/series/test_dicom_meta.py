"""The DICM magic and the SOP class walk over the File Meta group, checked against pydicom's output."""

from __future__ import annotations

import inspect
import io

import pytest

from tcia_fetch.series.dicom_meta import has_dicom_magic, read_sop_class_uid
from tests.series.archives import CT_IMAGE_STORAGE, make_dicom

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_sop_class_is_read_from_our_synthetic_files() -> None:
    assert read_sop_class_uid(make_dicom(2000, 1)) == CT_IMAGE_STORAGE
    assert read_sop_class_uid(make_dicom(2000, 1, sop_class_uid=MR_IMAGE_STORAGE)[:400]) == MR_IMAGE_STORAGE


def test_sop_class_is_read_from_a_file_pydicom_wrote() -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    dataset.SOPClassUID = MR_IMAGE_STORAGE
    dataset.PatientName = "Test^Patient"
    buffer = io.BytesIO()
    if "enforce_file_format" in inspect.signature(pydicom.dcmwrite).parameters:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    else:  # pydicom 2.x
        pydicom.dcmwrite(buffer, dataset, write_like_original=False)
    data = buffer.getvalue()
    assert has_dicom_magic(data)
    assert read_sop_class_uid(data[:1024]) == MR_IMAGE_STORAGE


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x00" * 132,
        b"<html>" * 40,
        make_dicom(2000, 1)[:140],
        make_dicom(2000, 1)[:132] + b"\x08\x00\x16\x00UI",
    ],
)
def test_missing_or_broken_meta_group_gives_none(head: bytes) -> None:
    assert read_sop_class_uid(head) is None


def test_magic_needs_dicm_at_128() -> None:
    assert has_dicom_magic(b"\x00" * 128 + b"DICM")
    assert not has_dicom_magic(b"DICM" + b"\x00" * 128)
