"""Directory layouts: where a series lands under the destination root.

A layout is a preset name or a template of ``{Field}`` placeholders separated by ``/``, where each
field is a server metadata column (``Collection``, ``PatientID``, ``StudyInstanceUID``, ...)::

    classic      {Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}   (the default)
    descriptive  NBIA Data Retriever's "Descriptive Directory Name", rule for rule:
                 {Collection}/{PatientID}/<StudyDate-StudyID-StudyDesc[:53]-last5(StudyUID)>/
                 <SeriesNumber-SeriesDescription[:53]-last5(SeriesUID)>
    flat         {SeriesInstanceUID}

What a caller may rely on:

* the result is a relative :class:`PurePosixPath` whose every component is a safe single name
  (reliability row E10): no ``/``, ``\\``, NUL or other control/format characters, never ``.`` or
  ``..``, no leading dot, no trailing dot or space, no Windows device name (``CON``, ``COM1``, ...),
  at most 128 bytes of UTF-8 (longer values are cut and get a short stable hash suffix). So a rendered
  path can never be absolute nor climb out of the root, whatever the server sends;
* a missing, ``None`` or empty field renders as ``NA``;
* rendering is deterministic: the same row always gives the same path (resume relies on it). Dates
  render as ``MM-DD-YYYY`` whether they arrive as :class:`datetime.date` or as the server's string;
* a custom template must contain ``{SeriesInstanceUID}`` so that two series never share a directory;
* the first component is never one of :data:`RESERVED_ROOT_NAMES`, the names tcia-fetch itself
  writes at the destination root (compared ignoring case, as macOS and SMB do): such a name gets a
  leading ``_`` (a collection called ``metadata.csv`` lands in ``_metadata.csv/``), the same rule
  as for Windows device names. The alternative, failing those series, would leave a collection
  impossible to fetch; a renamed directory is still found through metadata.csv and the catalog.

The descriptive preset keeps only the last five characters of the UIDs, so two series of a study
with the same number and description can render the same path. :func:`disambiguated` is the
second choice the engine uses then (``<name>~<hash of the UID>``; see store/seriespath.py).

Descriptive names follow the Java Data Retriever (``getPartOfName``/``getDescPartOfName``): a part is
left out together with its ``-`` when it is null, empty or the string ``"null"``; descriptions get
``/`` replaced by ``-``, are cut to 53 characters and are also left out when they are just ``-``.
``SeriesNumber`` renders as Data Retriever shows it (``2``, ``2.0`` or ``"2"`` → ``2.000000``) in
every layout, so a path does not depend on which endpoint supplied the number.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import PurePosixPath

from tcia_fetch.errors import InputError

__all__ = [
    "DEFAULT_LAYOUT",
    "MAX_COMPONENT_BYTES",
    "PRESET_LAYOUTS",
    "RESERVED_ROOT_NAMES",
    "SeriesLayout",
    "disambiguated",
    "is_reserved_root_name",
    "parse_layout",
    "render_series_path",
    "sanitize_component",
]

DEFAULT_LAYOUT = "classic"
MAX_COMPONENT_BYTES = 128
MISSING = "NA"

PRESET_LAYOUTS: Mapping[str, str] = {
    "classic": "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}",
    "descriptive": "{Collection}/{PatientID}/{*DescriptiveStudy}/{*DescriptiveSeries}",
    "flat": "{SeriesInstanceUID}",
}

#: Every name tcia-fetch writes at the root of a destination (a directory or a bucket prefix): the
#: state directory, metadata.csv and the two Parquet tables. Reports, locks, the journal and the
#: last plan live inside the state directory; temporaries start with a dot, which no rendered
#: component can. Keep this list in step with those writers (tests/store/test_reserved_names.py
#: pins it against their constants).
RESERVED_ROOT_NAMES: frozenset[str] = frozenset(
    {".tcia-fetch", "metadata.csv", "catalog.parquet", "instances.parquet"}
)
_RESERVED_FOLDED = frozenset(name.casefold() for name in RESERVED_ROOT_NAMES)

_PLAIN_NUMBER = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,12})?")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_()\-]*)\}")
_DESCRIPTION_LIMIT = 53
_UID_TAIL = 5
# Characters Windows (and SMB shares) refuse in names; replaced so a tree copies anywhere.
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{n}" for n in range(10)}
    | {f"LPT{n}" for n in range(10)}
    | {f"COM{d}" for d in "¹²³"}
    | {f"LPT{d}" for d in "¹²³"}
)
_HASH_SUFFIX_CHARS = 10
# Control, format (RTL override, zero-width), separators, and lone surrogates (not encodable).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Characters that the per-character rules keep as they are, for a fast path.
_PLAIN_CHARACTERS = re.compile(r"[A-Za-z0-9 _.,+()\-]*")


def sanitize_component(value: str) -> str:
    """Turn any string into one safe path component (see the module docstring for the rules)."""
    if _PLAIN_CHARACTERS.fullmatch(value):
        text = value  # UIDs, IDs and names: no character to replace (saves a lookup per character)
    else:
        text = "".join(
            "_"
            if char in "/\\" or char in _WINDOWS_FORBIDDEN or unicodedata.category(char) in _UNSAFE_CATEGORIES
            else char
            for char in value
        )
    if not text:
        return MISSING
    if text[0] == ".":
        text = "_" + text[1:]
    stripped = text.rstrip(". ")
    if len(stripped) < len(text):
        text = stripped + "_" * (len(text) - len(stripped))
    if text.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        text = "_" + text
    return _limit_length(text)


def _limit_length(text: str) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_COMPONENT_BYTES:
        return text
    digest = hashlib.sha256(encoded).hexdigest()[:_HASH_SUFFIX_CHARS]
    budget = MAX_COMPONENT_BYTES - _HASH_SUFFIX_CHARS - 1
    head = encoded[:budget].decode("utf-8", errors="ignore")
    # The cut may expose a trailing dot or space; the suffix follows it, so the name stays valid.
    return f"{head}~{digest}"


def _render_value(value: object) -> str | None:
    """Stable text for one metadata value, or None when the value is absent."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, datetime.date):
        return value.strftime("%m-%d-%Y")
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if text else None


def _series_number(value: object) -> str | None:
    """``2``, ``2.0`` and ``"2"`` all render as ``2.000000``, as v1 metadata (and so DR) shows it."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{Decimal(repr(value)):.6f}"
    text = _render_value(value)
    if text is not None and _PLAIN_NUMBER.fullmatch(text):
        return f"{Decimal(text):.6f}"
    return text


def _dr_part(text: str | None) -> str:
    # getPartOfName: null, empty and the literal "null" are left out with their dash.
    if text is None or text == "" or text == "null":
        return ""
    return text + "-"


def _dr_description_part(text: str | None) -> str:
    # getDescPartOfName: '/' → '-', "null" and "-" left out, cut to 53 characters.
    if text is None or text == "":
        return ""
    text = text.replace("/", "-")
    if text in {"null", "-"}:
        return ""
    return text[:_DESCRIPTION_LIMIT] + "-"


def _uid_tail(value: object) -> str:
    text = _render_value(value) or MISSING
    return text[-_UID_TAIL:]


def _descriptive_study(row: Mapping[str, object]) -> str:
    return (
        _dr_part(_render_value(row.get("StudyDate")))
        + _dr_part(_render_value(row.get("StudyID")))
        + _dr_description_part(_render_value(row.get("StudyDesc")))
        + _uid_tail(row.get("StudyInstanceUID"))
    )


def _descriptive_series(row: Mapping[str, object]) -> str:
    return (
        _dr_part(_series_number(row.get("SeriesNumber")))
        + _dr_description_part(_render_value(row.get("SeriesDescription")))
        + _uid_tail(row.get("SeriesInstanceUID"))
    )


_COMPUTED_FIELDS = {"*DescriptiveStudy": _descriptive_study, "*DescriptiveSeries": _descriptive_series}


@dataclass(frozen=True, slots=True)
class _Component:
    """One path component: literal text interleaved with field names (odd positions are fields)."""

    pieces: tuple[str, ...]

    def render(self, row: Mapping[str, object]) -> str:
        out = []
        for index, piece in enumerate(self.pieces):
            if index % 2 == 0:
                out.append(piece)
            elif piece in _COMPUTED_FIELDS:
                out.append(_COMPUTED_FIELDS[piece](row))
            elif piece == "SeriesNumber":
                out.append(_series_number(row.get(piece)) or MISSING)
            else:
                out.append(_render_value(row.get(piece)) or MISSING)
        return sanitize_component("".join(out))


@dataclass(frozen=True, slots=True)
class SeriesLayout:
    """A validated layout, ready to render. Build it with :func:`parse_layout`."""

    name: str
    template: str
    components: tuple[_Component, ...]

    def render(self, row: Mapping[str, object]) -> PurePosixPath:
        """The series directory for ``row``, relative to the destination root."""
        parts = [component.render(row) for component in self.components]
        if is_reserved_root_name(parts[0]):
            parts[0] = _limit_length("_" + parts[0])
        return PurePosixPath(*parts)

    @property
    def unique_per_series(self) -> bool:
        """True when a rendered path holds the whole series UID, so two series never share one."""
        return any("SeriesInstanceUID" in component.pieces[1::2] for component in self.components)


def _parse_component(text: str, *, template: str) -> _Component:
    pieces: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        pieces.append(text[position : match.start()])
        pieces.append(match.group(1))
        position = match.end()
    pieces.append(text[position:])
    for literal in pieces[0::2]:
        if "{" in literal or "}" in literal:
            raise InputError(
                f"layout template {template!r}: unbalanced brace or bad placeholder in {text!r}; "
                "write fields as {FieldName}, e.g. {Collection}/{PatientID}/{SeriesInstanceUID}",
                source="layout",
            )
        if "\\" in literal or "\x00" in literal:
            raise InputError(f"layout template {template!r}: backslash or NUL in {text!r}", source="layout")
    if text in {".", ".."}:
        raise InputError(f"layout template {template!r}: component {text!r} is not allowed", source="layout")
    return _Component(tuple(pieces))


@lru_cache(maxsize=32)
def parse_layout(layout: str) -> SeriesLayout:
    """Validate a preset name or a custom template; raise :class:`InputError` saying what to fix."""
    if layout in PRESET_LAYOUTS:
        template = PRESET_LAYOUTS[layout]
        components = tuple(_preset_component(part) for part in template.split("/"))
        return SeriesLayout(name=layout, template=template, components=components)
    template = layout.strip()
    if not template:
        raise InputError(
            "layout is empty; use classic, descriptive, flat or a {Field} template", source="layout"
        )
    if "{" not in template:
        raise InputError(
            f"unknown layout {layout!r}: presets are {', '.join(sorted(PRESET_LAYOUTS))}; "
            "a custom template uses {Field} placeholders",
            source="layout",
        )
    if template.startswith("/"):
        raise InputError(f"layout template {layout!r} must be relative (no leading '/')", source="layout")
    parts = template.split("/")
    if any(part == "" for part in parts):
        raise InputError(
            f"layout template {layout!r} has an empty component ('//' or a trailing '/')", source="layout"
        )
    components = tuple(_parse_component(part, template=layout) for part in parts)
    fields = {field for component in components for field in component.pieces[1::2]}
    if "SeriesInstanceUID" not in fields:
        raise InputError(
            f"layout template {layout!r} must contain {{SeriesInstanceUID}} so that every series "
            "gets its own directory",
            source="layout",
        )
    return SeriesLayout(name="custom", template=template, components=components)


def _preset_component(part: str) -> _Component:
    field = part[1:-1]
    return _Component(("", field, ""))


def is_reserved_root_name(name: str) -> bool:
    """True when ``name`` at the destination root would take the place of one of our own files."""
    return name.casefold() in _RESERVED_FOLDED


def disambiguated(relative: PurePosixPath, series_uid: str) -> PurePosixPath:
    """``relative`` with ``~`` and a short hash of ``series_uid`` after its last component.

    Deterministic (the same series always gets the same second choice) and still one safe
    component of at most :data:`MAX_COMPONENT_BYTES` bytes: the name is cut to make room.
    """
    digest = hashlib.sha256(series_uid.encode("utf-8", "surrogatepass")).hexdigest()
    suffix = "~" + digest[:_HASH_SUFFIX_CHARS]
    head = relative.name.encode("utf-8")[: MAX_COMPONENT_BYTES - len(suffix)].decode("utf-8", errors="ignore")
    return relative.with_name(head + suffix)


def render_series_path(layout: str, row: Mapping[str, object]) -> PurePosixPath:
    """Render ``row`` (server metadata keyed by column name) with ``layout``; see the module docstring."""
    return parse_layout(layout).render(row)
