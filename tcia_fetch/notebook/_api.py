"""The notebook functions: TCIA look-ups as DataFrames, and downloads, from sync or async code.

Each look-up is one async core (the same client calls, retries and ``--where`` filter as
``tcia-fetch query``, via :mod:`tcia_fetch.api.lookup`) with two faces: ``series_async(...)``
for async applications, and ``series(...)``, which runs the core through :func:`run_sync` and so
works in a plain script and inside Jupyter's running event loop alike. Settings are resolved as
the CLI resolves them: the call's ``base_url`` (or :func:`configure`'s) beats
``TCIA_FETCH_BASE_URL``, which beats the config file, which beats the default.

A query that matches nothing returns an empty DataFrame (same columns and dtypes) and warns
with an :class:`EmptyResultWarning` that names the filter to blame and the closest valid
values; see :mod:`tcia_fetch.plan.suggest`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.to_thread

from tcia_fetch._loop import run_sync
from tcia_fetch.api.client import NBIAClient
from tcia_fetch.api.lookup import QUERY_RETRY, column_names, find_series, run_query, series_columns
from tcia_fetch.api.models import PatientRow, StudyRow, ValueCount, ValueList
from tcia_fetch.config import ClientSettings, load_client_settings
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.report import RunReport, RunStats
from tcia_fetch.engine.retry import retry_call
from tcia_fetch.engine.run import RunOptions, fetch
from tcia_fetch.errors import InputError
from tcia_fetch.job.jobfile import JobSpec, UidOrigin, load_job
from tcia_fetch.notebook import frames
from tcia_fetch.notebook._progress import NotebookProgress, pick_mode
from tcia_fetch.plan.suggest import EmptyQuery, EmptyQueryExplainer
from tcia_fetch.uid import uid_problem

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DownloadReport",
    "EmptyResultWarning",
    "body_parts",
    "body_parts_async",
    "collections",
    "collections_async",
    "configure",
    "download",
    "download_async",
    "manufacturers",
    "manufacturers_async",
    "modalities",
    "modalities_async",
    "patients",
    "patients_async",
    "series",
    "series_async",
    "series_size",
    "series_size_async",
    "studies",
    "studies_async",
]

PathLike = str | os.PathLike[str]
_T = TypeVar("_T")


class EmptyResultWarning(UserWarning):
    """A query matched nothing; the message names the filter to blame and the closest values."""


@dataclass(frozen=True, slots=True)
class _Session:
    base_url: str | None = None
    config_file: Path | None = None


_session = _Session()


def configure(*, base_url: str | None = None, config_file: PathLike | None = None) -> None:
    """Set this session's server, as ``--base-url`` / ``--config`` do for one command.

    Every later call uses them unless it passes its own ``base_url`` / ``config_file``;
    ``configure()`` with no arguments restores the defaults (``TCIA_FETCH_BASE_URL``, then the
    config file, then TCIA's production API).
    """
    global _session
    _session = _Session(base_url, Path(config_file) if config_file is not None else None)


async def _settings(base_url: str | None, config_file: PathLike | None) -> ClientSettings:
    explicit = base_url if base_url is not None else _session.base_url
    config = Path(config_file) if config_file is not None else _session.config_file
    return await anyio.to_thread.run_sync(lambda: load_client_settings(base_url=explicit, config_file=config))


async def _pandas_loaded() -> None:
    """Import pandas (once, slow) off the event loop, failing early when it is missing."""
    await anyio.to_thread.run_sync(frames.load_pandas)


def _warn(finding: EmptyQuery | None, stacklevel: int) -> None:
    if finding is not None:
        warnings.warn(finding.message, EmptyResultWarning, stacklevel=stacklevel + 1)


_Rows = list[dict[str, object]]
_Found = tuple[_Rows, EmptyQuery | None]


async def _lookup(
    origin: str,
    filters: Mapping[str, str | None],
    fetch_rows: Callable[[NBIAClient], Awaitable[_Rows]],
    *,
    base_url: str | None,
    config_file: PathLike | None,
) -> _Found:
    """Rows of one look-up; when there are none, the explanation of why."""
    given = {key: value for key, value in filters.items() if value is not None}
    settings = await _settings(base_url, config_file)

    async def action(client: NBIAClient) -> _Found:
        rows = await fetch_rows(client)
        if rows:
            return rows, None
        if not given:
            return rows, EmptyQuery(origin, {}, f"{origin}: the server returned no rows")
        return rows, await EmptyQueryExplainer(client).explain(origin, given)

    return await run_query(settings, action)


def _value_rows(result: ValueList | Sequence[ValueCount]) -> _Rows:
    if isinstance(result, ValueList):
        return [dict(row) for row in result.rows]
    return [row.server_dict() for row in result]


def _value_frame(found: _Found, key: str, counts: bool, stacklevel: int) -> pd.DataFrame:
    rows, finding = found
    _warn(finding, stacklevel + 1)
    return frames.rows_frame(rows, (key, "Count", "Authorized") if counts else (key,))


# --- value lists ---------------------------------------------------------------------------------


async def _collections(counts: bool, base_url: str | None, config_file: PathLike | None) -> _Found:
    async def rows(client: NBIAClient) -> _Rows:
        return _value_rows(await client.collection_counts() if counts else await client.collections())

    return await _lookup("tf.collections", {}, rows, base_url=base_url, config_file=config_file)


async def collections_async(
    *, counts: bool = False, base_url: str | None = None, config_file: PathLike | None = None
) -> pd.DataFrame:
    """Async :func:`collections`."""
    await _pandas_loaded()
    return _value_frame(await _collections(counts, base_url, config_file), "Collection", counts, 2)


def collections(
    *, counts: bool = False, base_url: str | None = None, config_file: PathLike | None = None
) -> pd.DataFrame:
    """Collections with public images (``getCollectionValues``; with ``counts``, patients each)."""
    frames.load_pandas()
    found = run_sync(lambda: _collections(counts, base_url, config_file))
    return _value_frame(found, "Collection", counts, 2)


async def _modalities(
    collection: str | None,
    body_part: str | None,
    counts: bool,
    base_url: str | None,
    config_file: PathLike | None,
) -> _Found:
    async def rows(client: NBIAClient) -> _Rows:
        if counts:
            return _value_rows(await client.modality_counts(collection=collection, body_part=body_part))
        return _value_rows(await client.modalities(collection=collection, body_part=body_part))

    filters = {"collection": collection, "body_part": body_part}
    return await _lookup("tf.modalities", filters, rows, base_url=base_url, config_file=config_file)


async def modalities_async(
    collection: str | None = None,
    body_part: str | None = None,
    *,
    counts: bool = False,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Async :func:`modalities`."""
    await _pandas_loaded()
    found = await _modalities(collection, body_part, counts, base_url, config_file)
    return _value_frame(found, "Modality", counts, 2)


def modalities(
    collection: str | None = None,
    body_part: str | None = None,
    *,
    counts: bool = False,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Modalities, optionally of one collection and body part (``getModalityValues``)."""
    frames.load_pandas()
    found = run_sync(lambda: _modalities(collection, body_part, counts, base_url, config_file))
    return _value_frame(found, "Modality", counts, 2)


async def _body_parts(
    collection: str | None,
    modality: str | None,
    counts: bool,
    base_url: str | None,
    config_file: PathLike | None,
) -> _Found:
    async def rows(client: NBIAClient) -> _Rows:
        if counts:
            return _value_rows(await client.body_part_counts(collection=collection, modality=modality))
        return _value_rows(await client.body_parts(collection=collection, modality=modality))

    filters = {"collection": collection, "modality": modality}
    return await _lookup("tf.body_parts", filters, rows, base_url=base_url, config_file=config_file)


async def body_parts_async(
    collection: str | None = None,
    modality: str | None = None,
    *,
    counts: bool = False,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Async :func:`body_parts`."""
    await _pandas_loaded()
    found = await _body_parts(collection, modality, counts, base_url, config_file)
    return _value_frame(found, "BodyPart" if counts else "BodyPartExamined", counts, 2)


def body_parts(
    collection: str | None = None,
    modality: str | None = None,
    *,
    counts: bool = False,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Body parts examined (``getBodyPartValues``); the server's null value is a missing value."""
    frames.load_pandas()
    found = run_sync(lambda: _body_parts(collection, modality, counts, base_url, config_file))
    return _value_frame(found, "BodyPart" if counts else "BodyPartExamined", counts, 2)


async def _manufacturers(
    collection: str | None,
    modality: str | None,
    body_part: str | None,
    counts: bool,
    base_url: str | None,
    config_file: PathLike | None,
) -> _Found:
    async def rows(client: NBIAClient) -> _Rows:
        if counts:
            return _value_rows(
                await client.manufacturer_counts(
                    collection=collection, modality=modality, body_part=body_part
                )
            )
        return _value_rows(
            await client.manufacturers(collection=collection, modality=modality, body_part=body_part)
        )

    filters = {"collection": collection, "modality": modality, "body_part": body_part}
    return await _lookup("tf.manufacturers", filters, rows, base_url=base_url, config_file=config_file)


async def manufacturers_async(
    collection: str | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    *,
    counts: bool = False,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Async :func:`manufacturers`."""
    await _pandas_loaded()
    found = await _manufacturers(collection, modality, body_part, counts, base_url, config_file)
    return _value_frame(found, "Manufacturer", counts, 2)


def manufacturers(
    collection: str | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    *,
    counts: bool = False,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Equipment manufacturers, verbatim (``getManufacturerValues``)."""
    frames.load_pandas()
    found = run_sync(lambda: _manufacturers(collection, modality, body_part, counts, base_url, config_file))
    return _value_frame(found, "Manufacturer", counts, 2)


# --- patients, studies, series ---------------------------------------------------------------------


async def _patients(
    collection: str | None, patient_id: str | None, base_url: str | None, config_file: PathLike | None
) -> _Found:
    async def rows(client: NBIAClient) -> _Rows:
        return [
            row.server_dict() for row in await client.patients(collection=collection, patient_id=patient_id)
        ]

    filters = {"collection": collection, "patient_id": patient_id}
    return await _lookup("tf.patients", filters, rows, base_url=base_url, config_file=config_file)


def _model_frame(found: _Found, columns: Sequence[str], stacklevel: int) -> pd.DataFrame:
    rows, finding = found
    _warn(finding, stacklevel + 1)
    return frames.rows_frame(rows, columns)


async def patients_async(
    collection: str | None = None,
    patient_id: str | None = None,
    *,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Async :func:`patients`."""
    await _pandas_loaded()
    found = await _patients(collection, patient_id, base_url, config_file)
    return _model_frame(found, column_names(PatientRow), 2)


def patients(
    collection: str | None = None,
    patient_id: str | None = None,
    *,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Patients (``getPatient``; note the server's ``PatientId`` column)."""
    frames.load_pandas()
    found = run_sync(lambda: _patients(collection, patient_id, base_url, config_file))
    return _model_frame(found, column_names(PatientRow), 2)


async def _studies(
    collection: str | None,
    patient_id: str | None,
    study_uid: str | None,
    base_url: str | None,
    config_file: PathLike | None,
) -> _Found:
    async def rows(client: NBIAClient) -> _Rows:
        found = await client.studies(collection=collection, patient_id=patient_id, study_uid=study_uid)
        return [row.server_dict() for row in found]

    filters = {"collection": collection, "patient_id": patient_id, "study_uid": study_uid}
    return await _lookup("tf.studies", filters, rows, base_url=base_url, config_file=config_file)


async def studies_async(
    collection: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    *,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Async :func:`studies`."""
    await _pandas_loaded()
    found = await _studies(collection, patient_id, study_uid, base_url, config_file)
    return _model_frame(found, column_names(StudyRow), 2)


def studies(
    collection: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    *,
    base_url: str | None = None,
    config_file: PathLike | None = None,
) -> pd.DataFrame:
    """Studies (``getPatientStudy``); ``StudyDate`` is a datetime, ``SeriesCount`` an integer."""
    frames.load_pandas()
    found = run_sync(lambda: _studies(collection, patient_id, study_uid, base_url, config_file))
    return _model_frame(found, column_names(StudyRow), 2)


async def _series(
    filters: Mapping[str, str | None], where: str | None, base_url: str | None, config_file: PathLike | None
) -> _Found:
    return await find_series(await _settings(base_url, config_file), filters, where, origin="tf.series")


async def series_async(
    *,
    where: str | None = None,
    base_url: str | None = None,
    config_file: PathLike | None = None,
    **filters: str | None,
) -> pd.DataFrame:
    """Async :func:`series`."""
    await _pandas_loaded()
    found = await _series(filters, where, base_url, config_file)
    return _model_frame(found, series_columns(), 2)


def series(
    *,
    where: str | None = None,
    base_url: str | None = None,
    config_file: PathLike | None = None,
    **filters: str | None,
) -> pd.DataFrame:
    """Series (``getSeries``) as a DataFrame, with the filters of ``tcia-fetch query series``.

    Filters: ``collection``, ``patient_id``, ``study_uid``, ``modality``, ``body_part``,
    ``manufacturer``, ``manufacturer_model``, ``series_uid`` (matched case-insensitively by the
    server); ``where`` is the CLI's ``--where`` expression over the server's column names,
    e.g. ``"ImageCount > 50 and SeriesDescription contains 'axial'"``. ``ImageCount`` and
    ``FileSize`` are ``Int64``; the dates are datetimes.
    """
    frames.load_pandas()
    found = run_sync(lambda: _series(filters, where, base_url, config_file))
    return _model_frame(found, series_columns(), 2)


# --- sizes -----------------------------------------------------------------------------------------

_SIZE_CONCURRENCY = 4


def _uids_with_collections(selection: object) -> list[tuple[str, str | None]]:
    """UIDs (and their collection, when known) from a UID, a list, a DataFrame or a column."""
    if isinstance(selection, str):
        return [(selection, None)]
    columns = getattr(selection, "columns", None)
    if columns is not None:
        if "SeriesInstanceUID" not in columns:
            raise InputError(
                f"the DataFrame has no SeriesInstanceUID column (columns: {', '.join(map(str, columns))})"
            )
        uids = [str(uid) for uid in selection["SeriesInstanceUID"]]  # type: ignore[index]
        if "Collection" in columns:
            names = [None if _missing(c) else str(c) for c in selection["Collection"]]  # type: ignore[index]
            return list(zip(uids, names, strict=True))
        return [(uid, None) for uid in uids]
    if isinstance(selection, Iterable):
        return [(str(uid), None) for uid in selection]
    raise InputError(f"expected a series UID, a list of UIDs or a DataFrame, got {type(selection).__name__}")


def _missing(value: object) -> bool:
    return (
        value is None or (isinstance(value, float) and value != value) or str(value) in ("<NA>", "nan", "NaT")
    )


async def _series_size(
    selection: object, base_url: str | None, config_file: PathLike | None
) -> tuple[_Rows, list[str]]:
    wanted = _uids_with_collections(selection)
    for index, (uid, _) in enumerate(wanted):
        problem = uid_problem(uid)
        if problem is not None:
            raise InputError(f"{problem}: {uid[:80]!r}", source=f"series {index}")
    settings = await _settings(base_url, config_file)
    results: list[dict[str, object]] = [{"SeriesInstanceUID": uid} for uid, _ in wanted]
    unknown: list[str] = []
    limiter = anyio.CapacityLimiter(_SIZE_CONCURRENCY)

    async def one(index: int, client: NBIAClient) -> None:
        uid, collection = wanted[index]
        async with limiter:
            size = await _retrying(client, lambda c: c.series_size(uid, collection=collection))
        if size is None:
            unknown.append(uid)
        else:
            results[index].update(size.server_dict())

    async with NBIAClient(settings) as client, anyio.create_task_group() as group:
        for index in range(len(wanted)):
            group.start_soon(one, index, client)
    return results, unknown


async def _retrying(client: NBIAClient, action: Callable[[NBIAClient], Awaitable[_T]]) -> _T:
    """One query on an open client, with the look-ups' retry policy."""
    return await retry_call(lambda: action(client), policy=QUERY_RETRY, clock=SystemClock())


def _size_frame(found: tuple[_Rows, list[str]], stacklevel: int) -> pd.DataFrame:
    rows, unknown = found
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        message = f"tf.series_size: unknown or not public (the server returned no size): {shown}"
        warnings.warn(message, EmptyResultWarning, stacklevel=stacklevel + 1)
    frame = frames.rows_frame(rows, ("SeriesInstanceUID", "TotalSizeInBytes", "ObjectCount"))
    for column in ("TotalSizeInBytes", "ObjectCount"):
        if column not in frame.columns:
            frame[column] = frames.empty_counts(len(frame))
    return frame[["SeriesInstanceUID", "TotalSizeInBytes", "ObjectCount"]]


async def series_size_async(
    series: object, *, base_url: str | None = None, config_file: PathLike | None = None
) -> pd.DataFrame:
    """Async :func:`series_size`."""
    await _pandas_loaded()
    return _size_frame(await _series_size(series, base_url, config_file), 2)


def series_size(
    series: object, *, base_url: str | None = None, config_file: PathLike | None = None
) -> pd.DataFrame:
    """The server's ``TotalSizeInBytes`` and ``ObjectCount`` for one series or many.

    ``series`` is a UID, a list of UIDs or a DataFrame with a ``SeriesInstanceUID`` column
    (its ``Collection`` column, if any, routes NLST series to their own host). One row per
    series; a series the server does not know gets missing values and a warning.
    """
    frames.load_pandas()
    return _size_frame(run_sync(lambda: _series_size(series, base_url, config_file)), 2)


# --- downloads -------------------------------------------------------------------------------------


@dataclass(slots=True, repr=False)
class DownloadReport(RunReport):
    """A :class:`RunReport` (same fields, same JSON) with notebook conveniences."""

    @classmethod
    def of(cls, report: RunReport) -> DownloadReport:
        """Wrap an engine report."""
        return cls(**{field.name: getattr(report, field.name) for field in dataclasses.fields(report)})

    def failures_frame(self) -> pd.DataFrame:
        """Failed series (``SeriesInstanceUID``, ``reason``, ``reference``, ``attempts``, ``origin``)."""
        return frames.failures_frame(failure.as_dict() for failure in self.failures)

    @property
    def empty_queries(self) -> list[str]:
        """Why each query of the job that matched nothing did so (with the closest values)."""
        return [str(finding.get("message", "")) for finding in self.plan.get("empty_queries", [])]

    def metadata_frame(self) -> pd.DataFrame:
        """The destination's ``metadata.csv`` (one row per verified series) as a DataFrame."""
        return frames.read_csv(Path(self.destination) / "metadata.csv")

    def __repr__(self) -> str:
        return (
            f"DownloadReport(planned={self.planned}, done={self.done}, skipped={self.skipped}, "
            f"failed={self.failed}, exit_code={self.exit_code}, destination={self.destination!r})"
        )


def _job_for(selection: object, *, skip_invalid: bool) -> JobSpec:
    """A job from a JobSpec, a job/manifest/table path, a UID, a list of UIDs or a DataFrame."""
    if isinstance(selection, JobSpec):
        return selection
    if isinstance(selection, os.PathLike) or (
        isinstance(selection, str) and uid_problem(selection) is not None
    ):
        path = Path(os.fspath(selection))
        if not path.is_file():
            raise InputError(
                "not a series UID, and no such file (a job, .tcia manifest or CSV)", source=str(path)
            )
        return load_job(path, strict=not skip_invalid)
    source = "DataFrame" if getattr(selection, "columns", None) is not None else "list"
    origins: list[UidOrigin] = []
    seen: set[str] = set()
    duplicates = 0
    for index, (uid, _) in enumerate(_uids_with_collections(selection)):
        problem = uid_problem(uid)
        if problem is not None:
            raise InputError(
                f"{uid[:80]!r} is not a DICOM UID ({problem})", source=source, location=f"row {index}"
            )
        if uid in seen:
            duplicates += 1
            continue
        seen.add(uid)
        origins.append(UidOrigin(uid, f"{source} row {index}"))
    return JobSpec.for_uids(origins, duplicates=duplicates)


def _run_options(out: PathLike | None, options: Mapping[str, Any]) -> RunOptions:
    allowed = {field.name for field in dataclasses.fields(RunOptions)} - {"out"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(
            f"unknown option {unknown[0]!r} (options: {', '.join(sorted(allowed))})", source="tf.download"
        )
    values = dict(options)
    if values.get("base_url") is None:
        values["base_url"] = _session.base_url
    if values.get("config_file") is None:
        values["config_file"] = _session.config_file
    return RunOptions(out=Path(out) if out is not None else None, **values)


Progress = Literal["notebook", "live", "lines", "quiet"]


async def _download(job: JobSpec, options: RunOptions, stats: RunStats, mode: Progress) -> RunReport:
    """The engine run, with the CLI's progress reporter for terminals and logs."""
    if mode not in ("live", "lines"):
        return await fetch(job, options, stats=stats)
    from tcia_fetch.cli.progress import ProgressReporter

    reporter = ProgressReporter(stats, mode=mode)
    outcome: list[RunReport] = []
    async with anyio.create_task_group() as group:
        stop = anyio.Event()
        group.start_soon(reporter.run, stop)
        try:
            outcome.append(await fetch(job, options, stats=stats, on_event=reporter.on_event))
        finally:
            stop.set()
    return outcome[0]


def _finish(report: RunReport, stacklevel: int) -> DownloadReport:
    result = DownloadReport.of(report)
    for message in result.empty_queries:
        warnings.warn(message, EmptyResultWarning, stacklevel=stacklevel + 1)
    return result


async def download_async(
    series: object, out: PathLike | None = None, *, progress: bool | None = None, **options: Any
) -> DownloadReport:
    """Async :func:`download`."""
    run_options = _run_options(out, options)
    job = await anyio.to_thread.run_sync(lambda: _job_for(series, skip_invalid=run_options.skip_invalid))
    stats = RunStats()
    mode = pick_mode(progress)
    if mode != "notebook":
        return _finish(await _download(job, run_options, stats, mode), 2)
    display = NotebookProgress(stats)
    done = anyio.Event()

    async def redraw() -> None:
        while not done.is_set():
            with anyio.move_on_after(0.5):
                await done.wait()
            display.update()

    async with anyio.create_task_group() as group:
        group.start_soon(redraw)
        try:
            report = await fetch(job, run_options, stats=stats)
        finally:
            done.set()
    display.finish()
    return _finish(report, 2)


def download(
    series: object, out: PathLike | None = None, *, progress: bool | None = None, **options: Any
) -> DownloadReport:
    """Download series with the full engine (verified, resumable) and return the report.

    ``series`` is a DataFrame with a ``SeriesInstanceUID`` column (e.g. from :func:`series`),
    a list of UIDs, one UID, a job file / ``.tcia`` manifest / CSV path, or a
    :class:`~tcia_fetch.JobSpec`. ``options`` are :class:`~tcia_fetch.RunOptions` fields, as
    ``tcia-fetch run`` takes them: ``concurrency``, ``layout``, ``keep``, ``verify_md5``,
    ``fsync``, ``retry_failed``, ``max_requests_per_s``, ``max_bytes_per_s``, ``report_path``,
    ``skip_invalid``, ``base_url``, ``config_file``. Running it again resumes.

    Progress (``progress=None``): a bar that updates in place in Jupyter, the CLI's live bar on
    a terminal, a line every 30 s in batch logs; ``progress=False`` shows nothing. The report
    has ``done``, ``failed``, ``failures_frame()``, ``metadata_frame()`` and, for queries that
    matched nothing, ``empty_queries`` (also warned about).
    """
    run_options = _run_options(out, options)
    job = _job_for(series, skip_invalid=run_options.skip_invalid)
    stats = RunStats()
    mode = pick_mode(progress)
    display = NotebookProgress(stats) if mode == "notebook" else None
    engine_mode: Progress = "quiet" if mode == "notebook" else mode
    try:
        report = run_sync(
            lambda: _download(job, run_options, stats, engine_mode),
            tick=display.update if display is not None else None,
            tick_s=0.5,
        )
    finally:
        if display is not None:
            display.finish()
    return _finish(report, 2)
