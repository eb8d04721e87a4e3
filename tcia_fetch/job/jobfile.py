"""Loading a job: a TOML job file, a ``.tcia`` manifest or a CSV/TSV list becomes a JobSpec.

``tcia-fetch run JOB`` accepts any of the three; :func:`load_job` tells them apart by suffix
(``.toml``, ``.tcia``, ``.csv``/``.tsv``/``.txt``) and, for other names and ``.txt``, by a
``ListOfSeriesToDownload=`` line near the top. A job file looks like this (every section is
optional, but there must be at least one ``[[query]]`` or a ``[series]`` with something in it)::

    [server]                       # --base-url on the command line overrides
    base_url = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"

    [output]
    dest = "/data/tcia"            # --out overrides; relative to the job file's directory
    layout = "classic"             # "classic": {Collection}/{PatientID}/{StudyInstanceUID}/
                                   #   {SeriesInstanceUID}; "descriptive" (NBIA Data Retriever);
                                   # "flat": {SeriesInstanceUID};
                                   # or a template of getSeries column names containing {SeriesInstanceUID}
    keep = "dicom"                 # "dicom" (extract), "zip" (the archive as served), "tar.zst" (per series)
    new_file_names = false         # 1-001.dcm style names (NewFileNames=Yes)
    metadata_csv = true

    [download]
    concurrency = 4                # most downloads in flight
    max_requests_per_s = 0         # 0 = unlimited
    max_bytes_per_s = 0            # 0 = unlimited
    attempts = 6                   # network attempts per series
    integrity_attempts = 3         # re-downloads after a failed verification
    stall_timeout_s = 120
    first_byte_timeout_s = 300
    connect_timeout_s = 30

    [verify]
    md5 = true                     # per-file MD5 against md5hashes.csv

    [[query]]                      # any number; each expands to getSeries calls
    collection = ["QIN-HEADNECK", "HNSCC"]     # string or list; lists multiply out
    modality = ["CT", "PT"]
    body_part = "HEADNECK"         # also patient_id, study_uid, manufacturer, model
    image_count = { min = 50, max = 200 }      # client-side, inclusive
    series_date = { from = "2001-01-01", to = "2010-12-31" }
    description = "(?i)^axial"     # regular expression searched in SeriesDescription

    [series]
    uids = ["1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991"]
    manifests = ["lists/extra.tcia"]   # relative to the job file's directory
    tables = ["lists/extra.csv"]

Every error is an :class:`~tcia_fetch.errors.InputError` naming the file and the key path,
e.g. ``job.toml: query[1].image_count.min: must be >= 0, got -3`` (``query[i]`` counts the
``[[query]]`` tables from 0); a TOML syntax error gives ``file:line:column``. Unknown keys
are errors, with a suggestion when one is close. Explicit UIDs from every source are validated
and de-duplicated across sources at load time, so the planner receives each UID once with the
place it first came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcia_fetch.errors import InputError
from tcia_fetch.job.compact import CompactUids, ExplicitUids, list_key
from tcia_fetch.job.csvlist import UidTable, read_uid_table
from tcia_fetch.job.manifest import Manifest, looks_like_manifest, read_manifest
from tcia_fetch.job.models import (
    DownloadSection,
    JobFileModel,
    OutputSection,
    SeriesQuery,
    ServerSection,
    VerifySection,
)
from tcia_fetch.job.text import decode_input, read_input_bytes, read_input_head
from tcia_fetch.job.uidlist import LineProblem
from tcia_fetch.job.validation import key_error, validate_model
from tcia_fetch.store.location import BucketLocation, parse_destination
from tcia_fetch.uid import uid_problem

# The section models are re-exported: callers may import everything job-related from here.
__all__ = [
    "DownloadSection",
    "JobSpec",
    "LineProblem",
    "OutputSection",
    "SeriesQuery",
    "ServerSection",
    "UidOrigin",
    "VerifySection",
    "load_job",
    "load_job_file",
    "parse_job_mapping",
    "parse_job_toml",
]

_TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
#: How much of a list file is read to recognise a manifest by its marker line.
_SNIFF_CHARS = 64 * 1024
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True, slots=True)
class UidOrigin:
    """A series UID the user named explicitly, and where: ``lists/extra.tcia:14``,
    ``job.toml:series.uids[0]`` or ``table.csv:3``."""

    uid: str
    origin: str


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated job: what to fetch (queries and explicit UIDs) and how (the sections).

    ``explicit_uids`` are distinct, valid, in first-seen order across ``[series].uids``, then
    manifests, then tables: an :class:`~.compact.ExplicitUids`, ~12 bytes per UID, that reads
    list files again when iterated (so iterate it in a worker thread from async code).
    ``duplicates`` counts every repeated UID (within and across files). ``problems`` lists
    skipped invalid lines (only with ``strict=False``; the first ones in detail),
    ``problem_count`` counts them all. ``output.dest``, when set, is already absolute
    (relative paths are taken from the job file's directory).
    """

    source: Path | None
    server: ServerSection
    output: OutputSection
    download: DownloadSection
    verify: VerifySection
    queries: tuple[SeriesQuery, ...]
    explicit_uids: ExplicitUids
    duplicates: int = 0
    problems: tuple[LineProblem, ...] = ()
    problem_count: int = 0

    @property
    def dest(self) -> Path | None:
        """The output directory from the job, if it names one (``--out`` takes precedence)."""
        return Path(self.output.dest) if self.output.dest is not None else None

    @classmethod
    def for_uids(
        cls,
        uids: Iterable[UidOrigin],
        *,
        source: Path | None = None,
        duplicates: int = 0,
        problems: Sequence[LineProblem] = (),
        problem_count: int | None = None,
    ) -> JobSpec:
        """A job with default settings that fetches exactly ``uids`` (already valid, distinct)."""
        origins = tuple(uids)
        if not origins:
            raise InputError("nothing to download: no series UIDs", source=str(source) if source else None)
        return cls._default(
            _in_memory(origins), source=source, duplicates=duplicates, problems=problems, count=problem_count
        )

    @classmethod
    def _default(
        cls,
        explicit: ExplicitUids,
        *,
        source: Path | None,
        duplicates: int,
        problems: Sequence[LineProblem],
        count: int | None,
    ) -> JobSpec:
        return cls(
            source=source,
            server=ServerSection(),
            output=OutputSection(),
            download=DownloadSection(),
            verify=VerifySection(),
            queries=(),
            explicit_uids=explicit,
            duplicates=duplicates,
            problems=tuple(problems),
            problem_count=len(problems) if count is None else count,
        )

    @classmethod
    def from_uid_list(cls, parsed: Manifest | UidTable, *, source: Path | None = None) -> JobSpec:
        """A default-settings job for a bare manifest or table (``tcia-fetch run list.tcia``).

        The UIDs stay compact (read from the list again when planned): no object per UID.
        """
        explicit, _ = ExplicitUids.join([(parsed.compact, _origin_in(parsed.source))])
        return cls._default(
            explicit,
            source=source,
            duplicates=parsed.duplicates,
            problems=parsed.problems,
            count=parsed.problem_count,
        )

    def with_overrides(self, *, base_url: str | None = None, dest: Path | None = None) -> JobSpec:
        """The command line's ``--base-url`` / ``--out`` applied on top of the job's values."""
        server, output = self.server, self.output
        if base_url is not None:
            server = validate_model(ServerSection, {"base_url": base_url}, "--base-url", None)
        if dest is not None:
            output = self.output.model_copy(update={"dest": _absolute(dest.expanduser())})
        return dataclasses.replace(self, server=server, output=output)


def load_job(path: Path, *, strict: bool = True) -> JobSpec:
    """Load whatever ``tcia-fetch run`` was given: a job file, a manifest or a UID table.

    ``strict=False`` (``--skip-invalid``) keeps going past invalid list lines and reports them
    in ``JobSpec.problems``; job-file errors are always fatal.
    """
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return load_job_file(path, strict=strict)
    source = str(path)
    # Lists are streamed, never read whole (issue 13); only the head is read to tell the kind.
    if suffix == ".tcia" or looks_like_manifest(read_input_head(path, chars=_SNIFF_CHARS)):
        return JobSpec.from_uid_list(read_manifest(path, strict=strict), source=path)
    if suffix in _TABLE_SUFFIXES:
        return JobSpec.from_uid_list(read_uid_table(path, strict=strict), source=path)
    raise InputError(
        "cannot tell what kind of input this is: give a job file (.toml), a manifest (.tcia) or a "
        "table (.csv, .tsv, .txt) with a SeriesInstanceUID column",
        source=source,
    )


def load_job_file(path: Path, *, strict: bool = True) -> JobSpec:
    """Load a TOML job file; relative paths inside it are taken from its directory."""
    text = decode_input(read_input_bytes(path), source=str(path))
    return parse_job_toml(text, source=str(path), base_dir=path.parent, job_path=path, strict=strict)


def parse_job_toml(
    text: str, *, source: str, base_dir: Path, job_path: Path | None = None, strict: bool = True
) -> JobSpec:
    """Parse job-file text (see the module docstring); ``source`` names it in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        location = f"{position.group(1)}:{position.group(2)}" if position else None
        raise InputError(
            f"invalid TOML: {_TOML_POSITION.sub('', message)}", source=source, location=location
        ) from None
    except RecursionError:
        raise InputError("invalid TOML: nested too deeply", source=source) from None
    return parse_job_mapping(data, source=source, base_dir=base_dir, job_path=job_path, strict=strict)


def parse_job_mapping(
    data: dict[str, Any], *, source: str, base_dir: Path, job_path: Path | None = None, strict: bool = True
) -> JobSpec:
    """Validate an already-parsed TOML document and load the lists it references."""
    model = validate_model(JobFileModel, data, source, None)
    output = model.output
    if output.dest is not None:
        output = output.model_copy(update={"dest": _resolve_dest(output.dest, base_dir, source)})
    origins, duplicates, problems, problem_count = _explicit_uids(model, source, base_dir, strict)
    if not model.query and not origins:
        raise InputError(
            "nothing to download: add a [[query]] table, or a [series] section with uids, "
            "manifests or tables",
            source=source,
        )
    return JobSpec(
        source=job_path,
        server=model.server,
        output=output,
        download=model.download,
        verify=model.verify,
        queries=model.query,
        explicit_uids=origins,
        duplicates=duplicates,
        problems=problems,
        problem_count=problem_count,
    )


def _resolve_dest(dest: str, base_dir: Path, source: str) -> str:
    """An ``s3://`` URL as written (checked); a local path made absolute against the job's directory."""
    location = parse_destination(dest, source=f"{source}: output.dest")
    if isinstance(location, BucketLocation):
        return location.url
    return _absolute(base_dir / location.expanduser())


def _absolute(path: Path) -> str:
    """Absolute and lexically normalised (``jobs/../out`` -> ``out``), symlinks left alone."""
    return os.path.normpath(path.absolute())


def _explicit_uids(
    model: JobFileModel, source: str, base_dir: Path, strict: bool
) -> tuple[ExplicitUids, int, tuple[LineProblem, ...], int]:
    """Inline UIDs, then manifests, then tables: validated, de-duplicated across all of them."""
    inline_errors = []
    for index, uid in enumerate(model.series.uids):
        problem = uid_problem(uid)
        if problem is not None:
            inline_errors.append(f"series.uids[{index}]: {uid[:70]!r} is not a DICOM UID ({problem})")
    if inline_errors:
        first, *rest = inline_errors
        key, _, message = first.partition(": ")
        raise key_error(
            "\n".join([message, *(f"  {source}: {more}" for more in rest)]), source=source, key=key
        )
    inline = model.series.uids
    sources: list[tuple[CompactUids, Callable[[int], str]]] = [
        (
            CompactUids(
                source,
                array("Q", (list_key(uid) for uid in inline)),
                array("I", range(len(inline))),
                lambda: enumerate(inline),
            ),
            lambda index: f"{source}:series.uids[{index}]",
        )
    ]

    duplicates = 0
    problems: list[LineProblem] = []
    problem_count = 0
    for key, names in (("series.manifests", model.series.manifests), ("series.tables", model.series.tables)):
        for index, name in enumerate(names):
            location = f"{key}[{index}]"
            if not name.strip():
                raise key_error("empty path", source=source, key=location)
            path = base_dir / Path(name).expanduser()
            if not path.is_file():
                what = "is a directory, not a file" if path.is_dir() else "file not found"
                raise key_error(f"{what}: {path}", source=source, key=location)
            parsed: Manifest | UidTable
            if key == "series.manifests":
                parsed = read_manifest(path, source=name, strict=strict)
            else:
                parsed = read_uid_table(path, source=name, strict=strict)
            sources.append((parsed.compact, _origin_in(name)))
            duplicates += parsed.duplicates
            problems.extend(parsed.problems)
            problem_count += parsed.problem_count

    explicit, repeats = ExplicitUids.join(sources)
    return explicit, duplicates + repeats, tuple(problems), problem_count


def _origin_in(name: str) -> Callable[[int], str]:
    """``name:line``: where a UID of a list file came from."""
    return lambda line: f"{name}:{line}"


def _in_memory(origins: tuple[UidOrigin, ...]) -> ExplicitUids:
    """Explicit UIDs the caller already holds as objects (notebooks, tests), kept as given."""
    uids = CompactUids(
        "(given UIDs)",
        array("Q", (list_key(origin.uid) for origin in origins)),
        array("I", range(len(origins))),
        lambda: ((index, origin.uid) for index, origin in enumerate(origins)),
    )
    explicit, _ = ExplicitUids.join([(uids, lambda index: origins[index].origin)])
    return explicit
