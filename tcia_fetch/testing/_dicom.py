"""DICOM Part-10 templates for the fake server's instances (the only module that imports pydicom).

Building a DICOM file with pydicom costs milliseconds, far too much for a benchmark that serves
hundreds of thousands of instances. So pydicom writes ONE header per series layout (file meta + dataset,
explicit VR little endian) with fixed-width placeholder values for the fields that change from instance
to instance; :meth:`DicomTemplate.render_header` then patches the SOP Instance UID (twice: file meta and
dataset), InstanceNumber and AcquisitionNumber into a copy of those bytes. The header ends with the
Pixel Data element header, so a full instance is ``render_header(...) + pixel_bytes`` and every instance
of a series has the same size: ``header_length + pixel_length``. Series whose series-level values have
the same encoded lengths share a layout: their header is pydicom's header of the first such series with
the values patched in (see :func:`build_template`).

Fixed widths: SOP Instance UIDs are ``2.25.`` + 38 decimal digits (44 bytes with the UI padding);
InstanceNumber and AcquisitionNumber are IS strings left-justified in 8 characters (trailing spaces are
DICOM padding; pydicom reads ``"12      "`` as 12).
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass

__all__ = [
    "SOP_UID_DIGITS",
    "DicomTemplate",
    "HeaderFields",
    "build_template",
    "build_template_with_pydicom",
    "sop_class_uid_for",
]

SOP_UID_DIGITS = 38
_SOP_PLACEHOLDER = "2.25." + "9" * SOP_UID_DIGITS
_IS_WIDTH = 8
_IS_PLACEHOLDER = "9" * _IS_WIDTH
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1369.1"

_SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def sop_class_uid_for(modality: str) -> str:
    """The SOP Class a synthetic series of ``modality`` uses (Secondary Capture when unknown)."""
    return _SOP_CLASS_BY_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE)


@dataclass(frozen=True, slots=True)
class HeaderFields:
    """The series-level values written into every instance header of one series."""

    series_uid: str
    study_uid: str
    patient_id: str
    patient_sex: str | None
    patient_age: str | None
    modality: str
    body_part: str | None
    manufacturer: str | None
    manufacturer_model: str | None
    study_date_dicom: str
    series_date_dicom: str
    study_description: str | None
    series_description: str | None
    study_id: str | None
    series_number: int | None
    rows: int
    columns: int


@dataclass(frozen=True, slots=True)
class DicomTemplate:
    """One series' header bytes plus where the per-instance fields sit in them."""

    header: bytes
    sop_uid_offsets: tuple[int, ...]
    instance_number_offset: int
    acquisition_number_offset: int
    pixel_length: int

    @property
    def header_length(self) -> int:
        """Bytes before the pixel values, Pixel Data element header included."""
        return len(self.header)

    @property
    def instance_size(self) -> int:
        """Size in bytes of every ``.dcm`` file of the series."""
        return len(self.header) + self.pixel_length

    def render_header(self, sop_instance_uid: str, instance_number: int, acquisition_number: int) -> bytes:
        """The header of one instance; append the pixel bytes to get the whole file."""
        sop = sop_instance_uid.encode("ascii")
        if len(sop) != len(_SOP_PLACEHOLDER):
            raise ValueError(f"SOP Instance UID {sop_instance_uid!r} is not 2.25. + {SOP_UID_DIGITS} digits")
        out = bytearray(self.header)
        for offset in self.sop_uid_offsets:
            out[offset : offset + len(sop)] = sop
        out[self.instance_number_offset : self.instance_number_offset + _IS_WIDTH] = _fixed_is(
            instance_number
        )
        out[self.acquisition_number_offset : self.acquisition_number_offset + _IS_WIDTH] = _fixed_is(
            acquisition_number
        )
        return bytes(out)


def _fixed_is(value: int) -> bytes:
    text = str(value)
    if len(text) > _IS_WIDTH:
        raise ValueError(f"IS value {value} wider than {_IS_WIDTH} characters")
    return text.ljust(_IS_WIDTH).encode("ascii")


def _element_value_offset(header: bytes, group: int, element: int, vr: bytes, start: int = 0) -> int:
    """Offset of the value of a short-form explicit-VR element whose tag is found at or after start."""
    tag = struct.pack("<HH", group, element) + vr
    found = header.find(tag, start)
    if found < 0:
        raise RuntimeError(f"element ({group:04X},{element:04X}) missing from the template")
    return found + 8


# Series-level elements whose values differ between series: (group, element, VR, padding byte).
_SERIES_ELEMENTS: tuple[tuple[int, int, bytes, bytes], ...] = (
    (0x0002, 0x0002, b"UI", b"\x00"),
    (0x0008, 0x0016, b"UI", b"\x00"),
    (0x0008, 0x0020, b"DA", b" "),
    (0x0008, 0x0021, b"DA", b" "),
    (0x0008, 0x0060, b"CS", b" "),
    (0x0008, 0x0070, b"LO", b" "),
    (0x0008, 0x1030, b"LO", b" "),
    (0x0008, 0x103E, b"LO", b" "),
    (0x0008, 0x1090, b"LO", b" "),
    (0x0010, 0x0010, b"PN", b" "),
    (0x0010, 0x0020, b"LO", b" "),
    (0x0010, 0x0040, b"CS", b" "),
    (0x0010, 0x1010, b"AS", b" "),
    (0x0018, 0x0015, b"CS", b" "),
    (0x0020, 0x000D, b"UI", b"\x00"),
    (0x0020, 0x000E, b"UI", b"\x00"),
    (0x0020, 0x0010, b"SH", b" "),
    (0x0020, 0x0011, b"IS", b" "),
    (0x0028, 0x0010, b"US", b""),
    (0x0028, 0x0011, b"US", b""),
)


def _series_values(fields: HeaderFields) -> tuple[bytes | None, ...]:
    """The encoded value of each of ``_SERIES_ELEMENTS`` (None = element absent), padded as pydicom pads."""
    sop_class = sop_class_uid_for(fields.modality)
    texts: tuple[str | None, ...] = (
        sop_class,
        sop_class,
        fields.study_date_dicom,
        fields.series_date_dicom,
        fields.modality,
        fields.manufacturer,
        fields.study_description,
        fields.series_description,
        fields.manufacturer_model,
        fields.patient_id,
        fields.patient_id,
        fields.patient_sex,
        fields.patient_age,
        fields.body_part,
        fields.study_uid,
        fields.series_uid,
        fields.study_id,
        None if fields.series_number is None else str(fields.series_number),
    )
    encoded: list[bytes | None] = []
    for text, (_, _, _, pad) in zip(texts, _SERIES_ELEMENTS, strict=False):
        if text is None:
            encoded.append(None)
            continue
        raw = text.encode("ascii")
        encoded.append(raw + pad if len(raw) % 2 else raw)
    encoded.append(struct.pack("<H", fields.rows))
    encoded.append(struct.pack("<H", fields.columns))
    return tuple(encoded)


@dataclass(frozen=True, slots=True)
class _Layout:
    template: DicomTemplate
    value_offsets: tuple[int | None, ...]


_layouts: dict[tuple[int, ...], _Layout] = {}
_layouts_lock = threading.Lock()


def build_template(fields: HeaderFields) -> DicomTemplate:
    """The series header: pydicom writes one header per *layout*, later series of that layout are patched.

    A layout is the tuple of encoded value lengths of the series-level elements; two series with the
    same layout have byte-identical headers except at those values, so patching the values into a copy
    gives exactly the bytes pydicom would write (a test compares both). This turns ~3 ms of pydicom per
    series into microseconds for catalogs of thousands of series.
    """
    values = _series_values(fields)
    key = tuple(-1 if value is None else len(value) for value in values)
    with _layouts_lock:
        layout = _layouts.get(key)
    if layout is None:
        template = build_template_with_pydicom(fields)
        offsets: list[int | None] = []
        position = 132
        for (group, element, vr, _), value in zip(_SERIES_ELEMENTS, values, strict=True):
            if value is None:
                offsets.append(None)
                continue
            position = _element_value_offset(template.header, group, element, vr, position)
            offsets.append(position)
        layout = _Layout(template=template, value_offsets=tuple(offsets))
        with _layouts_lock:
            _layouts.setdefault(key, layout)
        return template
    header = bytearray(layout.template.header)
    for offset, value in zip(layout.value_offsets, values, strict=True):
        if offset is not None and value is not None:
            header[offset : offset + len(value)] = value
    pixel_length = 2 * fields.rows * fields.columns
    header[-4:] = struct.pack("<I", pixel_length)
    return DicomTemplate(
        header=bytes(header),
        sop_uid_offsets=layout.template.sop_uid_offsets,
        instance_number_offset=layout.template.instance_number_offset,
        acquisition_number_offset=layout.template.acquisition_number_offset,
        pixel_length=pixel_length,
    )


def build_template_with_pydicom(fields: HeaderFields) -> DicomTemplate:
    """Write the series header with pydicom and locate the per-instance placeholders in the bytes."""
    import pydicom
    from pydicom.config import disable_value_validation
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    sop_class = sop_class_uid_for(fields.modality)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(_SOP_PLACEHOLDER)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = "TCIAFETCH_FAKE"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _SOP_PLACEHOLDER
    ds.StudyDate = fields.study_date_dicom
    ds.SeriesDate = fields.series_date_dicom
    ds.Modality = fields.modality
    if fields.manufacturer is not None:
        ds.Manufacturer = fields.manufacturer
    if fields.study_description is not None:
        ds.StudyDescription = fields.study_description
    if fields.series_description is not None:
        ds.SeriesDescription = fields.series_description
    if fields.manufacturer_model is not None:
        ds.ManufacturerModelName = fields.manufacturer_model
    ds.PatientName = fields.patient_id
    ds.PatientID = fields.patient_id
    if fields.patient_sex is not None:
        ds.PatientSex = fields.patient_sex
    if fields.patient_age is not None:
        ds.PatientAge = fields.patient_age
    if fields.body_part is not None:
        # Archives hold odd values ("chest", "ABDOMEN_PELVIS "); write them verbatim, as they were received.
        with disable_value_validation():
            ds.BodyPartExamined = fields.body_part
    ds.StudyInstanceUID = fields.study_uid
    ds.SeriesInstanceUID = fields.series_uid
    if fields.study_id is not None:
        ds.StudyID = fields.study_id
    if fields.series_number is not None:
        ds.SeriesNumber = fields.series_number
    ds.AcquisitionNumber = _IS_PLACEHOLDER
    ds.InstanceNumber = _IS_PLACEHOLDER
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = fields.rows
    ds.Columns = fields.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    pixel_length = 2 * fields.rows * fields.columns
    header = (
        buffer.getvalue()
        + struct.pack("<HH", 0x7FE0, 0x0010)
        + b"OW\x00\x00"
        + struct.pack("<I", pixel_length)
    )

    meta_sop = _element_value_offset(header, 0x0002, 0x0003, b"UI")
    data_sop = _element_value_offset(header, 0x0008, 0x0018, b"UI")
    acquisition = _element_value_offset(header, 0x0020, 0x0012, b"IS")
    instance = _element_value_offset(header, 0x0020, 0x0013, b"IS")
    return DicomTemplate(
        header=header,
        sop_uid_offsets=(meta_sop, data_sop),
        instance_number_offset=instance,
        acquisition_number_offset=acquisition,
        pixel_length=pixel_length,
    )
