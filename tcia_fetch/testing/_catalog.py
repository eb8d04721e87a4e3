"""The fake archive's content: collections, patients, studies, series and their DICOM instances.

Everything is derived from a seed: the same ``Catalog.generate(...)`` arguments give the same UIDs, rows
and byte-identical ``.dcm`` files on every run. Nothing big is built up front: a series' DICOM header
template (pydicom) is made on first use and cached on the entry, pixel data lives in the catalog's
bounded :class:`~tcia_fetch.testing._pixels.PixelStore`, so a catalog of many gigabytes costs a few
kilobytes per series until it is served.

Sizes add up exactly by construction: every instance of a series has ``template.instance_size`` bytes,
so ``total_bytes = instance_count * instance_size``; the server reports that figure as
``getSeriesSize.TotalSizeInBytes`` and ``FileSize`` and the zip carries exactly those bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from math import isqrt

from tcia_fetch.testing._dicom import SOP_UID_DIGITS, DicomTemplate, HeaderFields, build_template
from tcia_fetch.testing._pixels import PIXEL_VARIANTS, PixelStore

__all__ = ["Catalog", "InstanceFile", "SeriesEntry"]

_UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.9999"
# Estimated header size used to turn a requested instance size into a pixel size.
_HEADER_ESTIMATE = 800

_COLLECTION_NAMES = (
    ("Synth-Lung-CT", "SYNLUNG"),
    ("RIDER-Synthetic-Breast", "RSB"),
    ("TCGA-SYNTH-HNSC", "TCGA-SY"),
    ("Pediatric-Synth-Abdomen", "PSA"),
    ("Prostate-MR-Synth", "PMRS"),
    ("CPTAC-SYNTH-PDA", "C3S"),
    ("Phantom-Synth-QA", "PHQA"),
    ("NSCLC-Synth-Radiomics", "NSR"),
)
_LICENSES = (
    (
        "Creative Commons Attribution 4.0 International License",
        "CC BY 4.0",
        "https://creativecommons.org/licenses/by/4.0/",
    ),
    (
        "Creative Commons Attribution 3.0 Unported License",
        "CC BY 3.0",
        "http://creativecommons.org/licenses/by/3.0/",
    ),
    (
        "Creative Commons Attribution-NonCommercial 4.0 International License",
        "CC BY-NC 4.0",
        "https://creativecommons.org/licenses/by-nc/4.0/",
    ),
)
_SITES = ("VCU", "MDA", "FDA", "UCSF", "MSKCC")
_MODALITIES = ("CT", "MR", "PT", "CT", "MR", "CR", "MG", "US", "CT", "NM")
_BODY_PARTS = ("CHEST", "ABDOMEN", "HEAD", "BREAST", "PELVIS", "NECK", "LUNG")
_MANUFACTURERS = (
    ("SIEMENS", "SOMATOM Definition AS", "syngo CT VA48A"),
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "LightSpeedverrel"),
    ('"GE Healthcare"', "Discovery MR750", "DV26.0_R03"),
    ("Philips", "Ingenuity TF", "4.1.2"),
    ("TOSHIBA", "Aquilion", "V4.51"),
)
_SERIES_DESCRIPTIONS = {
    "CT": ("AXIAL CHEST W/O", "CT ABD PEL 2.5mm", "CTAC HEAD"),
    "MR": ("AX T1 POST GAD", "SAG T2 FSE", "DWI b800"),
    "PT": ("PET WB AC", "PET NO AC"),
}


def _digits(seed_text: str, count: int) -> str:
    """``count`` decimal digits without a leading zero, derived from ``seed_text``."""
    value = int.from_bytes(hashlib.sha256(seed_text.encode()).digest(), "big")
    low = 10 ** (count - 1)
    return str(low + value % (9 * low))


def _date_mdy(day: dt.date | None) -> str | None:
    return None if day is None else day.strftime("%m-%d-%Y")


@dataclass(frozen=True, slots=True)
class InstanceFile:
    """One ``.dcm`` of a series, as the archive stores it.

    ``position`` is the 0-based rank in InstanceNumber order, ``db_index`` the 0-based rank in the
    server's fixed "database order" (the order of ``00000001.dcm...`` in a zip). ``db_name`` is
    ``0000000N.dcm``; ``new_name`` the ``NewFileNames=Yes`` name (``<acq>-<inst>.dcm``). Bytes are made
    on demand: :meth:`header` (cheap) + pixel bytes from the catalog's cache; :attr:`md5` is cached.
    """

    series: SeriesEntry
    position: int
    db_index: int
    sop_instance_uid: str
    instance_number: int
    acquisition_number: int
    db_name: str
    new_name: str

    @property
    def size(self) -> int:
        """Size of the file in bytes (identical for every instance of a series)."""
        return self.series.instance_size

    @property
    def pixel_variant(self) -> int:
        """Which of the series' cached pixel variants this instance uses."""
        return self.position % PIXEL_VARIANTS

    def header(self) -> bytes:
        """The DICOM bytes before the pixel values (preamble, file meta, dataset, Pixel Data header)."""
        return self.series.template().render_header(
            self.sop_instance_uid, self.instance_number, self.acquisition_number
        )

    def read_bytes(self) -> bytes:
        """The whole Part-10 file."""
        return self.header() + self.series.pixel_bytes(self.pixel_variant)

    @property
    def md5(self) -> str:
        """Lower-case hex MD5 of the file (what the archive stores as ``md5_digest``)."""
        return self.series.md5_of(self)


@dataclass(slots=True)
class _SeriesCache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    template: DicomTemplate | None = None
    instances: tuple[InstanceFile, ...] | None = None
    md5: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class SeriesEntry:
    """One series of the catalog with every attribute the NBIA rows carry (``None`` = null).

    Rows: :meth:`series_row` (v4 getSeries/getUpdatedSeries), :meth:`metadata_row` (v4
    getSeriesMetadata), :meth:`size_row` (getSeriesSize), :meth:`legacy_series_row` (v1/v2 getSeries).
    Null values are left out of every row, as the real JSON does.
    """

    uid: str
    collection: str
    patient_id: str
    study_uid: str
    modality: str
    body_part: str | None
    manufacturer: str | None
    manufacturer_model: str | None
    software_versions: str | None
    series_number: int | None
    series_description: str | None
    protocol_name: str | None
    study_description: str | None
    study_id: str | None
    study_date: dt.date
    series_date: dt.date
    date_released: dt.date
    max_submission: dt.date
    patient_sex: str | None
    patient_age: str | None
    site: str | None
    license_name: str
    license_short_name: str
    license_uri: str
    data_description_uri: str
    instance_count: int
    rows: int
    columns: int
    acquisition_runs: int
    key: str
    store: PixelStore = field(repr=False)
    _cache: _SeriesCache = field(default_factory=_SeriesCache, repr=False)

    # ---- DICOM content -------------------------------------------------------------------------
    def header_fields(self) -> HeaderFields:
        """Series-level values every instance header carries."""
        return HeaderFields(
            series_uid=self.uid,
            study_uid=self.study_uid,
            patient_id=self.patient_id,
            patient_sex=self.patient_sex,
            patient_age=self.patient_age,
            modality=self.modality,
            body_part=self.body_part,
            manufacturer=self.manufacturer,
            manufacturer_model=self.manufacturer_model,
            study_date_dicom=self.study_date.strftime("%Y%m%d"),
            series_date_dicom=self.series_date.strftime("%Y%m%d"),
            study_description=self.study_description,
            series_description=self.series_description,
            study_id=self.study_id,
            series_number=self.series_number,
            rows=self.rows,
            columns=self.columns,
        )

    def template(self) -> DicomTemplate:
        """The series' header template, built with pydicom on first use."""
        cached = self._cache.template
        if cached is None:
            cached = build_template(self.header_fields())
            self._cache.template = cached
        return cached

    @property
    def pixel_length(self) -> int:
        """Bytes of pixel data per instance."""
        return 2 * self.rows * self.columns

    @property
    def instance_size(self) -> int:
        """Bytes of every ``.dcm`` file of this series."""
        return self.template().instance_size

    @property
    def total_bytes(self) -> int:
        """Sum of the ``.dcm`` sizes: getSeriesSize.TotalSizeInBytes and FileSize."""
        return self.instance_count * self.instance_size

    def pixel_bytes(self, variant: int) -> bytes:
        """Raw pixel bytes of one variant (from the catalog's bounded cache)."""
        return self.store.raw(self.key, variant, self.pixel_length)

    def instances(self) -> tuple[InstanceFile, ...]:
        """The instances in InstanceNumber order."""
        cached = self._cache.instances
        if cached is None:
            cached = self._plan_instances()
            self._cache.instances = cached
        return cached

    def instance_files(self) -> list[InstanceFile]:
        """The instances in database order: the order of ``00000001.dcm, 00000002.dcm, ...`` in a zip."""
        return sorted(self.instances(), key=lambda item: item.db_index)

    def md5_order(self) -> list[InstanceFile]:
        """Row order of ``md5hashes.csv``: fixed per series, neither sorted nor database order."""
        files = self.instance_files()
        order = list(range(len(files)))
        random.Random(f"{self.key}/md5order").shuffle(order)
        if len(order) > 1 and order == sorted(order):
            order.reverse()
        return [files[index] for index in order]

    def md5_of(self, instance: InstanceFile) -> str:
        """MD5 of an instance's bytes, computed once and cached."""
        found = self._cache.md5.get(instance.position)
        if found is None:
            digest = hashlib.md5(instance.header())
            digest.update(self.pixel_bytes(instance.pixel_variant))
            found = digest.hexdigest()
            self._cache.md5[instance.position] = found
        return found

    def _plan_instances(self) -> tuple[InstanceFile, ...]:
        count = self.instance_count
        db_order = list(range(count))
        random.Random(f"{self.key}/dborder").shuffle(db_order)
        if count > 1 and db_order == sorted(db_order):
            db_order[0], db_order[1] = db_order[1], db_order[0]
        db_index_of = {position: index for index, position in enumerate(db_order)}
        acquisitions = [1 + (position * self.acquisition_runs) // count for position in range(count)]
        # NewFileNames: runs of equal AcquisitionNumber along InstanceNumber order; position within run.
        run_numbers: list[int] = []
        run_positions: list[int] = []
        run = 0
        within = 0
        previous: int | None = None
        for acquisition in acquisitions:
            if acquisition != previous:
                run += 1
                within = 0
                previous = acquisition
            within += 1
            run_numbers.append(run)
            run_positions.append(within)
        run_width = len(str(max(run_numbers, default=1)))
        position_width = len(str(max(run_positions, default=1)))
        instances = []
        for position in range(count):
            db_index = db_index_of[position]
            instances.append(
                InstanceFile(
                    series=self,
                    position=position,
                    db_index=db_index,
                    sop_instance_uid="2.25." + _digits(f"{self.key}/sop/{position}", SOP_UID_DIGITS),
                    instance_number=position + 1,
                    acquisition_number=acquisitions[position],
                    db_name=f"{db_index + 1:08d}.dcm",
                    new_name=f"{run_numbers[position]:0{run_width}d}-{run_positions[position]:0{position_width}d}.dcm",
                )
            )
        return tuple(instances)

    # ---- rows --------------------------------------------------------------------------------
    def series_row(self, *, delta_bytes: int = 0, delta_count: int = 0) -> dict[str, object]:
        """The v4 getSeries row (30 columns, nulls omitted, dates MM-DD-YYYY)."""
        row: dict[str, object | None] = {
            "SeriesInstanceUID": self.uid,
            "StudyInstanceUID": self.study_uid,
            "Modality": self.modality,
            "ProtocolName": self.protocol_name,
            "SeriesDate": _date_mdy(self.series_date),
            "SeriesDescription": self.series_description,
            "BodyPartExamined": self.body_part,
            "SeriesNumber": self.series_number,
            "AnnotationsFlag": None,
            "Collection": self.collection,
            "Site": self.site,
            "PatientID": self.patient_id,
            "PatientSex": self.patient_sex,
            "PatientAge": self.patient_age,
            "AdmittingDiagnosisDescription": None,
            "Manufacturer": self.manufacturer,
            "ManufacturerModelName": self.manufacturer_model,
            "SoftwareVersions": self.software_versions,
            "ImageCount": self.instance_count + delta_count,
            "MaxSubmissionTimestamp": _date_mdy(self.max_submission),
            "LicenseName": self.license_name,
            "LicenseURI": self.license_uri,
            "DataDescriptionURI": self.data_description_uri,
            "FileSize": self.total_bytes + delta_bytes,
            "ReleasedStatus": "Yes",
            "DateReleased": _date_mdy(self.date_released),
            "StudyDesc": self.study_description,
            "StudyDate": _date_mdy(self.study_date),
            "ThirdPartyAnalysis": None,
            "Authorized": 1,
        }
        return {key: value for key, value in row.items() if value is not None}

    def metadata_row(self, *, delta_bytes: int = 0, delta_count: int = 0) -> dict[str, object]:
        """The v4 getSeriesMetadata row (41 columns, nulls omitted)."""
        row: dict[str, object | None] = {
            "PatientID": self.patient_id,
            "PatientName": self.patient_id,
            "PatientSex": self.patient_sex,
            "EthnicGroup": None,
            "Phantom": "NO",
            "SpeciesCode": "337915000",
            "SpeciesDescription": "Homo sapiens",
            "StudyInstanceUID": self.study_uid,
            "StudyDate": _date_mdy(self.study_date),
            "StudyDesc": self.study_description,
            "AdmittingDiagnosisDescription": None,
            "StudyID": self.study_id,
            "PatientAge": self.patient_age,
            "LongitudinalTemporalEventType": None,
            "LongitudinalTemporalOffsetFromEvent": None,
            "SeriesInstanceUID": self.uid,
            "Collection": self.collection,
            "Site": self.site,
            "Modality": self.modality,
            "ProtocolName": self.protocol_name,
            "SeriesDate": _date_mdy(self.series_date),
            "SeriesDescription": self.series_description,
            "BodyPartExamined": self.body_part,
            "SeriesNumber": self.series_number,
            "AnnotationsFlag": None,
            "Manufacturer": self.manufacturer,
            "ManufacturerModelName": self.manufacturer_model,
            "PixelSpacing(mm)-Row": "0.703125",
            "SliceThickness(mm)": "2.500000",
            "SoftwareVersions": self.software_versions,
            "ImageCount": self.instance_count + delta_count,
            "MaxSubmissionTimestamp": _date_mdy(self.max_submission),
            "LicenseName": self.license_name,
            "LicenseURI": self.license_uri,
            "DataDescriptionURI": self.data_description_uri,
            "FileSize": self.total_bytes + delta_bytes,
            "ReleasedStatus": "Yes",
            "DateReleased": _date_mdy(self.date_released),
            "ThirdPartyAnalysis": None,
            "Authorized": 1,
        }
        return {key: value for key, value in row.items() if value is not None}

    def size_row(self, *, delta_bytes: int = 0, delta_count: int = 0) -> dict[str, object]:
        """The getSeriesSize row."""
        return {
            "TotalSizeInBytes": self.total_bytes + delta_bytes,
            "ObjectCount": self.instance_count + delta_count,
        }

    def legacy_series_row(self, *, delta_bytes: int = 0, delta_count: int = 0) -> dict[str, object]:
        """The v1/v2 getSeries row (Timestamp-style dates, CollectionURI/TimeStamp names)."""

        def stamp(day: dt.date) -> str:
            return day.strftime("%Y-%m-%d 00:00:00.0")

        row: dict[str, object | None] = {
            "SeriesInstanceUID": self.uid,
            "StudyInstanceUID": self.study_uid,
            "Modality": self.modality,
            "ProtocolName": self.protocol_name,
            "SeriesDate": stamp(self.series_date),
            "SeriesDescription": self.series_description,
            "BodyPartExamined": self.body_part,
            "SeriesNumber": self.series_number,
            "AnnotationsFlag": None,
            "Collection": self.collection,
            "PatientID": self.patient_id,
            "Manufacturer": self.manufacturer,
            "ManufacturerModelName": self.manufacturer_model,
            "SoftwareVersions": self.software_versions,
            "ImageCount": self.instance_count + delta_count,
            "TimeStamp": stamp(self.max_submission),
            "LicenseName": self.license_name,
            "LicenseURI": self.license_uri,
            "CollectionURI": self.data_description_uri,
            "FileSize": self.total_bytes + delta_bytes,
            "DateReleased": stamp(self.date_released),
            "StudyDesc": self.study_description,
            "StudyDate": stamp(self.study_date),
            "ThirdPartyAnalysis": None,
        }
        return {key: value for key, value in row.items() if value is not None}

    def license_text(self) -> str:
        """The LICENSE member of getImage zips (NBIA docker default wording; production wording unknown)."""
        return (
            f"License Information. The {self.collection} collection is distributed under the "
            f"{self.license_short_name} at {self.license_uri} By downloading the data, you agree to abide "
            "by terms of this license."
        )


def _geometry(instance_bytes: int) -> tuple[int, int]:
    """Rows and Columns whose 16-bit pixel data makes an instance of about ``instance_bytes``."""
    pixels = max(1, (instance_bytes - _HEADER_ESTIMATE) // 2)
    columns = min(512, max(1, isqrt(pixels)))
    if pixels // columns > 65535:
        columns = min(65535, -(-pixels // 65535))
    rows = max(1, min(65535, pixels // columns))
    return rows, columns


@dataclass(frozen=True, slots=True)
class _Study:
    collection_index: int
    collection: str
    patient_id: str
    patient_sex: str
    patient_age: str
    study_uid: str
    study_date: dt.date
    study_description: str
    study_id: str


class Catalog:
    """The fake archive's series, in a stable order, with a by-UID index.

    Build one with :meth:`generate`. ``series`` is the list of :class:`SeriesEntry` (generated series
    first, then ``extra_series_uids`` in the order given); :meth:`get` finds one by exact UID.
    """

    def __init__(self, series: Sequence[SeriesEntry], store: PixelStore) -> None:
        self.series: list[SeriesEntry] = list(series)
        self.store = store
        self._by_uid = {entry.uid: entry for entry in self.series}
        if len(self._by_uid) != len(self.series):
            raise ValueError("catalog series UIDs must be unique")

    def get(self, uid: str) -> SeriesEntry | None:
        """The series with exactly this UID, or None."""
        return self._by_uid.get(uid)

    def __len__(self) -> int:
        return len(self.series)

    @property
    def collections(self) -> list[str]:
        """Collection names in first-seen order."""
        return list(dict.fromkeys(entry.collection for entry in self.series))

    @property
    def total_bytes(self) -> int:
        """Sum of every series' DICOM bytes (builds every template)."""
        return sum(entry.total_bytes for entry in self.series)

    def warm(self, *, md5: bool = False) -> None:
        """Build every header template now (about 1 ms per series) so queries answer promptly.

        With ``md5`` also hash every instance now. The real server reads MD5s from its database
        (computed at ingest); hashing here, before serving, keeps request-time CPU honest when a
        benchmark shares the machine between the server and the client.
        """
        for entry in self.series:
            entry.template()
            for instance in entry.instances():
                if md5:
                    entry.md5_of(instance)

    @classmethod
    def generate(
        cls,
        *,
        seed: int = 0,
        collections: int = 2,
        patients_per_collection: int = 2,
        studies_per_patient: int = 1,
        series_per_study: int = 2,
        instances_per_series: tuple[int, int] = (2, 6),
        instance_bytes: tuple[int, int] = (2_000, 20_000),
        extra_series_uids: Iterable[str] = (),
        pixel_cache_bytes: int = 512 * 1024 * 1024,
        compression_level: int = 1,
    ) -> Catalog:
        """A deterministic synthetic catalog.

        ``instances_per_series`` and ``instance_bytes`` are inclusive (low, high) ranges drawn per
        series (all instances of one series have the same size, like slices of one CT).
        ``extra_series_uids`` (e.g. read from a real ``.tcia``) become additional series spread over
        the generated studies, so a real manifest can be planned and downloaded against the fake.
        The catalog always contains at least one null BodyPartExamined, one lower-case and one value
        with a trailing space once it has five or more series.
        """
        if min(collections, patients_per_collection, studies_per_patient) < 1 or series_per_study < 0:
            raise ValueError("need at least one collection, patient and study; series_per_study >= 0")
        if min(instances_per_series) < 1 or min(instance_bytes) < 1:
            raise ValueError("instances_per_series and instance_bytes must be positive ranges")
        store = PixelStore(max_bytes=pixel_cache_bytes, compression_level=compression_level)
        studies: list[_Study] = []
        for c_index in range(collections):
            base_name, base_prefix = _COLLECTION_NAMES[c_index % len(_COLLECTION_NAMES)]
            lap = c_index // len(_COLLECTION_NAMES)
            name = f"{base_name}-{lap}" if lap else base_name
            prefix = f"{base_prefix}{lap}" if lap else base_prefix
            for p_index in range(patients_per_collection):
                rng = random.Random(f"{seed}/patient/{c_index}/{p_index}")
                patient_id = f"{prefix}-{p_index + 1:03d}"
                sex = rng.choice(("M", "F"))
                age = f"{rng.randint(18, 89):03d}Y"
                for s_index in range(studies_per_patient):
                    study_key = f"{seed}/study/{c_index}/{p_index}/{s_index}"
                    study_date = dt.date(1995, 1, 1) + dt.timedelta(days=rng.randint(0, 9000))
                    studies.append(
                        _Study(
                            collection_index=c_index,
                            collection=name,
                            patient_id=patient_id,
                            patient_sex=sex,
                            patient_age=age,
                            study_uid=f"{_UID_ROOT}.2.{_digits(study_key, 30)}",
                            study_date=study_date,
                            study_description=rng.choice(
                                ("CT CHEST W CONTRAST", "PET CT WB", "MRI PELVIS", "")
                            ),
                            study_id=str(rng.randint(1, 99999)),
                        )
                    )
        generated: list[tuple[_Study, str]] = []
        for study_index, study in enumerate(studies):
            for r_index in range(series_per_study):
                generated.append(
                    (study, f"{_UID_ROOT}.3.{_digits(f'{seed}/series/{study_index}/{r_index}', 30)}")
                )
        seen = {uid for _, uid in generated}
        for extra_index, uid in enumerate(extra_series_uids):
            if uid in seen:
                continue
            seen.add(uid)
            generated.append((studies[extra_index % len(studies)], uid))

        entries = [
            _make_series(
                seed=seed,
                index=index,
                study=study,
                uid=uid,
                instances_per_series=instances_per_series,
                instance_bytes=instance_bytes,
                store=store,
            )
            for index, (study, uid) in enumerate(generated)
        ]
        return cls(entries, store)


def _make_series(
    *,
    seed: int,
    index: int,
    study: _Study,
    uid: str,
    instances_per_series: tuple[int, int],
    instance_bytes: tuple[int, int],
    store: PixelStore,
) -> SeriesEntry:
    rng = random.Random(f"{seed}/series-attrs/{index}/{uid}")
    modality = _MODALITIES[rng.randrange(len(_MODALITIES))]
    body_part: str | None = _BODY_PARTS[rng.randrange(len(_BODY_PARTS))]
    manufacturer, model, software = _MANUFACTURERS[rng.randrange(len(_MANUFACTURERS))]
    manufacturer_value: str | None = manufacturer
    # Fixed positions guarantee the odd values real catalogs contain.
    if index == 1:
        body_part = None
    elif index == 2:
        body_part = "ABDOMEN_PELVIS "
    elif index == 3:
        manufacturer_value = None
    elif index == 4:
        body_part = "chest"
    license_name, license_short, license_uri = _LICENSES[study.collection_index % len(_LICENSES)]
    count = rng.randint(min(instances_per_series), max(instances_per_series))
    size = rng.randint(min(instance_bytes), max(instance_bytes))
    rows, columns = _geometry(size)
    released = dt.date(2015, 1, 1) + dt.timedelta(days=30 * (index % 90) + study.collection_index * 7)
    descriptions = _SERIES_DESCRIPTIONS.get(modality, ("SYNTHETIC SERIES",))
    return SeriesEntry(
        uid=uid,
        collection=study.collection,
        patient_id=study.patient_id,
        study_uid=study.study_uid,
        modality=modality,
        body_part=body_part,
        manufacturer=manufacturer_value,
        manufacturer_model=model if manufacturer_value is not None else None,
        software_versions=software if manufacturer_value is not None else None,
        series_number=None if index % 7 == 6 else rng.randint(1, 600),
        series_description=rng.choice(descriptions),
        protocol_name=None if index % 2 else "SYNTH PROTOCOL",
        study_description=study.study_description or None,
        study_id=study.study_id,
        study_date=study.study_date,
        series_date=study.study_date,
        date_released=released,
        max_submission=released - dt.timedelta(days=10),
        patient_sex=study.patient_sex,
        patient_age=study.patient_age,
        site=_SITES[study.collection_index % len(_SITES)],
        license_name=license_name,
        license_short_name=license_short,
        license_uri=license_uri,
        data_description_uri=f"https://doi.org/10.7937/SYNTH.{_digits(study.collection, 6)}",
        instance_count=count,
        rows=rows,
        columns=columns,
        acquisition_runs=2 if count >= 4 and index % 3 == 2 else 1,
        key=f"{seed}/{uid}",
        store=store,
    )
