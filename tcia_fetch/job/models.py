"""The job file's sections as pydantic models: values only, validated once, frozen.

Every model forbids unknown keys (a typo such as ``concurency`` is an error, not a silently
ignored setting) and is strict about types (``attempts = "6"`` is refused rather than guessed).
Numbers carry their unit in the name. The loader (:mod:`.jobfile`) turns validation failures
into InputErrors that name the file and the key path; the shape of the file is documented
there and in ``configs/example-job.toml``.

pydantic stays inside :mod:`tcia_fetch.job`: the models live here and :mod:`.validation` translates
its ValidationError; callers see plain attributes and InputError only.
"""

from __future__ import annotations

import itertools
import re
import string
from datetime import date
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from tcia_fetch.errors import redact_url
from tcia_fetch.uid import uid_problem

__all__ = [
    "DEFAULT_BASE_URL",
    "LAYOUT_FIELDS",
    "MAX_FILTER_COMBINATIONS",
    "NAMED_LAYOUTS",
    "DateRange",
    "DownloadSection",
    "IntRange",
    "JobFileModel",
    "OutputSection",
    "SeriesQuery",
    "SeriesSection",
    "ServerSection",
    "VerifySection",
]

DEFAULT_BASE_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"

#: Named layouts and their templates. ``descriptive`` (NBIA Data Retriever's "Descriptive
#: Directory Name") omits empty parts and truncates descriptions, which no plain template can
#: say, so it has none: the path renderer implements it by name.
NAMED_LAYOUTS: dict[str, str | None] = {
    "classic": "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}",
    "descriptive": None,
    "flat": "{SeriesInstanceUID}",
}

#: Fields a custom layout template may use: getSeries column names (NBIA API v4).
LAYOUT_FIELDS = frozenset(
    {
        "BodyPartExamined",
        "Collection",
        "Manufacturer",
        "ManufacturerModelName",
        "Modality",
        "PatientID",
        "ProtocolName",
        "SeriesDate",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "Site",
        "StudyDate",
        "StudyDesc",
        "StudyInstanceUID",
    }
)

#: Upper bound on the getSeries calls one [[query]] may expand to (the cartesian product of
#: its filter lists); beyond it the job is almost certainly a mistake.
MAX_FILTER_COMBINATIONS = 10_000

#: [[query]] key -> keyword argument of the API client's ``series(...)``, in call order.
_SERVER_FILTERS = (
    ("collection", "collection"),
    ("patient_id", "patient_id"),
    ("study_uid", "study_uid"),
    ("modality", "modality"),
    ("body_part", "body_part"),
    ("manufacturer", "manufacturer"),
    ("manufacturer_model", "manufacturer_model"),
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ServerSection(_Section):
    """``[server]``: where the NBIA API lives. ``--base-url`` on the command line wins."""

    base_url: str = DEFAULT_BASE_URL

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(f"not a URL: {redact_url(value)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL with a host, got {redact_url(value)!r}")
        return value if value.endswith("/") else value + "/"


class OutputSection(_Section):
    """``[output]``: where and how series land on disk. ``--out`` on the command line wins.

    ``dest`` is kept as written here; the loader resolves a relative one against the job
    file's directory. ``layout`` is ``classic``, ``descriptive``, ``flat`` or a template of
    ``{Field}`` names from :data:`LAYOUT_FIELDS` (validated here, rendered elsewhere).
    """

    dest: str | None = None
    layout: str = "classic"
    keep: Literal["dicom", "zip", "tar.zst"] = "dicom"
    new_file_names: bool = False
    metadata_csv: bool = True

    @field_validator("dest")
    @classmethod
    def _check_dest(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave the key out to use --out)")
        return value

    @field_validator("layout")
    @classmethod
    def _check_layout(cls, value: str) -> str:
        if value in NAMED_LAYOUTS:
            return value
        check_layout_template(value)
        return value

    @property
    def layout_template(self) -> str | None:
        """The template for ``layout``; None for ``descriptive`` (rendered by name)."""
        return NAMED_LAYOUTS.get(self.layout, self.layout)


def check_layout_template(template: str) -> None:
    """Raise ValueError unless ``template`` is a safe relative layout with one dir per series."""
    if "{" not in template:
        raise ValueError(
            f"unknown layout {template!r}: use one of {', '.join(NAMED_LAYOUTS)} or a template "
            "such as '{Collection}/{PatientID}/{SeriesInstanceUID}'"
        )
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"layout template {template!r} is malformed: {exc}") from None
    fields: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"layout field {{{name}}} may not carry a format spec or conversion")
        if name not in LAYOUT_FIELDS:
            raise ValueError(f"unknown layout field {{{name}}}; allowed: {', '.join(sorted(LAYOUT_FIELDS))}")
        fields.append(name)
    if "SeriesInstanceUID" not in fields:
        raise ValueError(
            "a layout template must contain {SeriesInstanceUID}, or two series could share a directory"
        )
    if template.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", template):
        raise ValueError("a layout template must be a relative path (no leading '/' or drive)")
    parts = re.split(r"[/\\]", template)
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("a layout template may not contain '..', '.' or empty path components")


class DownloadSection(_Section):
    """``[download]``: how hard to push the server and how long to wait for it."""

    concurrency: int = Field(default=4, ge=1, le=256)
    max_requests_per_s: float = Field(default=0, ge=0)
    max_bytes_per_s: int = Field(default=0, ge=0)
    attempts: int = Field(default=6, ge=1, le=100)
    integrity_attempts: int = Field(default=3, ge=0, le=100)
    stall_timeout_s: float = Field(default=120, gt=0)
    first_byte_timeout_s: float = Field(default=300, gt=0)
    connect_timeout_s: float = Field(default=30, gt=0)
    #: An outage (server unreachable, or answering nothing but 429/503) longer than this ends the
    #: run with exit 3 instead of waiting for days; rerun to resume.
    max_outage_s: float = Field(default=1800, gt=0)


class VerifySection(_Section):
    """``[verify]``: what to check beyond counts and sizes (always checked)."""

    md5: bool = True


class IntRange(_Section):
    """Inclusive ``{ min = .., max = .. }``; either bound may be left out, not both."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> IntRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def contains(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min}..{self.max}"
        return f">= {self.min}" if self.min is not None else f"<= {self.max}"


class DateRange(_Section):
    """Inclusive ``{ from = "YYYY-MM-DD", to = "YYYY-MM-DD" }`` (TOML dates also accepted)."""

    from_: date | None = Field(default=None, alias="from")
    to: date | None = None

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _parse_iso(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"must be an ISO date YYYY-MM-DD, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> DateRange:
        if self.from_ is None and self.to is None:
            raise ValueError("give from, to or both")
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError(f"from ({self.from_}) is after to ({self.to})")
        return self

    def contains(self, value: date) -> bool:
        return (self.from_ is None or value >= self.from_) and (self.to is None or value <= self.to)

    def describe(self) -> str:
        return f"{self.from_ or '…'}..{self.to or '…'}"


def _as_values(value: Any) -> Any:
    """A filter is a string or a list of strings; both become a de-duplicated tuple."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value  # let the type check report it
    cleaned: list[Any] = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                raise ValueError("filter values must not be empty")
        if item not in cleaned:
            cleaned.append(item)
    if not cleaned:
        raise ValueError("an empty list matches nothing; leave the key out instead")
    return tuple(cleaned)


class SeriesQuery(_Section):
    """One ``[[query]]``: server-side filters (each a string or a list) and client-side filters.

    The server filters expand to the cartesian product of their lists, one ``getSeries`` call
    each (:meth:`server_filter_sets`); the client filters are applied to every row returned
    (:meth:`accepts`). ``model`` is accepted as the TOML key for ``manufacturer_model``.
    """

    collection: tuple[str, ...] | None = None
    patient_id: tuple[str, ...] | None = None
    study_uid: tuple[str, ...] | None = None
    modality: tuple[str, ...] | None = None
    body_part: tuple[str, ...] | None = None
    manufacturer: tuple[str, ...] | None = None
    manufacturer_model: tuple[str, ...] | None = Field(
        default=None, validation_alias=AliasChoices("model", "manufacturer_model")
    )
    image_count: IntRange | None = None
    series_date: DateRange | None = None
    description: str | None = None

    @field_validator(
        "collection",
        "patient_id",
        "study_uid",
        "modality",
        "body_part",
        "manufacturer",
        "manufacturer_model",
        mode="before",
    )
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_values(value)

    @field_validator("study_uid")
    @classmethod
    def _check_study_uids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for uid in value or ():
            problem = uid_problem(uid)
            if problem is not None:
                raise ValueError(f"{uid!r} is not a DICOM UID ({problem})")
        return value

    @field_validator("description")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_scope(self) -> SeriesQuery:
        present = [getattr(self, field) for field, _ in _SERVER_FILTERS if getattr(self, field)]
        if not present:
            raise ValueError(
                "a [[query]] needs at least one of collection, patient_id, study_uid, modality, "
                "body_part, manufacturer, model: without one it would list every public series"
            )
        combinations = 1
        for values in present:
            combinations *= len(values)
        if combinations > MAX_FILTER_COMBINATIONS:
            raise ValueError(
                f"the filter lists multiply out to {combinations} getSeries calls "
                f"(limit {MAX_FILTER_COMBINATIONS}); split the query"
            )
        return self

    def server_filter_sets(self) -> list[dict[str, str]]:
        """Keyword arguments for each ``client.series(...)`` call: the cartesian product.

        Keys come from ``collection, patient_id, study_uid, modality, body_part,
        manufacturer, manufacturer_model``; a filter not given is absent from the dicts.
        Order is deterministic: the first filter varies slowest.
        """
        present = [(keyword, getattr(self, field)) for field, keyword in _SERVER_FILTERS]
        given = [(keyword, values) for keyword, values in present if values]
        keywords = [keyword for keyword, _ in given]
        return [
            dict(zip(keywords, combination, strict=True))
            for combination in itertools.product(*(values for _, values in given))
        ]

    def accepts(self, image_count: int | None, series_date: date | None, description: str | None) -> bool:
        """Whether a returned row passes the client-side filters.

        A filter that is set needs its value: a row whose image count, series date or
        description is missing (None) FAILS that filter, because we cannot show it matches.
        Filters not set accept anything, None included. Ranges are inclusive; ``description``
        is a regular expression searched anywhere in SeriesDescription (anchor it with ``^``).
        """
        if self.image_count is not None and (
            image_count is None or not self.image_count.contains(image_count)
        ):
            return False
        if self.series_date is not None and (
            series_date is None or not self.series_date.contains(series_date)
        ):
            return False
        return self.description is None or (
            description is not None and re.search(self.description, description) is not None
        )

    def describe(self) -> str:
        """One line for plans and logs, e.g. ``collection in (A, B); modality = CT; images 50..200``."""
        parts = []
        for field, _keyword in _SERVER_FILTERS:
            values: tuple[str, ...] | None = getattr(self, field)
            if values:
                name = "model" if field == "manufacturer_model" else field
                shown = values[0] if len(values) == 1 else f"({', '.join(values)})"
                parts.append(f"{name} {'=' if len(values) == 1 else 'in'} {shown}")
        if self.image_count is not None:
            parts.append(f"images {self.image_count.describe()}")
        if self.series_date is not None:
            parts.append(f"series date {self.series_date.describe()}")
        if self.description is not None:
            parts.append(f"description ~ /{self.description}/")
        return "; ".join(parts)


class SeriesSection(_Section):
    """``[series]``: explicit UIDs, manifests and tables (paths relative to the job file)."""

    uids: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    @field_validator("uids", "manifests", "tables", mode="before")
    @classmethod
    def _lists_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(value)
        return value


class JobFileModel(_Section):
    """The whole TOML document; the loader turns it into a :class:`~.jobfile.JobSpec`."""

    server: ServerSection = ServerSection()
    output: OutputSection = OutputSection()
    download: DownloadSection = DownloadSection()
    verify: VerifySection = VerifySection()
    query: tuple[SeriesQuery, ...] = ()
    series: SeriesSection = SeriesSection()

    @field_validator("query", mode="before")
    @classmethod
    def _list_of_tables(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(value)
        return value
