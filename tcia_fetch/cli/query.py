"""``tcia-fetch query``: everyday look-ups against the NBIA API.

Each subcommand builds :class:`~tcia_fetch.config.ClientSettings` (``--base-url``,
``--config``, ``TCIA_FETCH_BASE_URL``), runs one :class:`~tcia_fetch.api.NBIAClient` call
through ``anyio.run`` and renders the server's rows (:mod:`tcia_fetch.cli.render`). Errors
print one line to stderr and exit with the error's ``exit_code``.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.api.lookup import find_series, run_query, series_columns
from tcia_fetch.api.models import PatientRow, ServerRow, StudyRow, ValueCount, ValueList
from tcia_fetch.cli._show import shown
from tcia_fetch.cli.common import CommandInterruptedError, die, exit_interrupted, run_command
from tcia_fetch.cli.render import OutputFormat, check_columns, parse_columns, render_rows
from tcia_fetch.config import load_client_settings
from tcia_fetch.errors import EXIT_SOME_FAILED, InputError, TciaFetchError
from tcia_fetch.notebook import frames
from tcia_fetch.store.atomic import write_bytes_atomic_sync, write_text_atomic_sync

__all__ = ["query"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

_SERIES_COLUMNS = (
    "SeriesInstanceUID",
    "Collection",
    "PatientID",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesDate",
    "ImageCount",
    "FileSize",
)
_PATIENT_COLUMNS = ("PatientId", "PatientName", "PatientSex", "Collection", "SpeciesDescription")
_STUDY_COLUMNS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "PatientID",
    "Collection",
    "SeriesCount",
)


def _aliases(model: type[ServerRow]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


_OUTPUT_KEY = "tcia_fetch.query.output"


def _remember_output(context: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--output`` is kept on the context, so every subcommand gets it without a new argument."""
    context.meta[_OUTPUT_KEY] = value


def _output_path() -> Path | None:
    context = click.get_current_context(silent=True)
    value = context.meta.get(_OUTPUT_KEY) if context is not None else None
    return value if isinstance(value, Path) else None


def _check_output(output_format: object) -> None:
    """Refuse what cannot work before any request: parquet needs its extra and a non-terminal target."""
    if output_format != "parquet":
        return
    if _output_path() is None and sys.stdout.isatty():
        raise InputError(
            "parquet is binary: give --output FILE, or redirect stdout to a file or pipe",
            source="--format parquet",
        )
    frames.require_parquet()


def _common_options(command: _F) -> _F:
    """Options every subcommand takes: where the server is and how to print."""
    options = (
        click.option(
            "--base-url",
            metavar="URL",
            help="API root, e.g. https://nbia.cancerimagingarchive.net/nbia-api/services/v4/ "
            "(default: config file, then $TCIA_FETCH_BASE_URL).",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Config file (TOML, [server] table). Default: $XDG_CONFIG_HOME/tcia-fetch/config.toml.",
        ),
        click.option(
            "--format",
            "output_format",
            type=click.Choice(["table", "json", "jsonl", "csv", "parquet"]),
            default="table",
            show_default=True,
            help="Output format; json keeps the server's rows and key names; parquet (binary, needs "
            "tcia-fetch[pandas]) keeps counts as integers and dates as dates.",
        ),
        click.option("--columns", metavar="A,B", help="Columns to show, named as the server names them."),
        click.option(
            "--output",
            "-o",
            metavar="FILE",
            type=click.Path(path_type=Path, dir_okay=False),
            expose_value=False,
            callback=_remember_output,
            help="Write the output to FILE (atomically) instead of stdout.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _run(base_url: str | None, config_file: Path | None, action: Callable[[NBIAClient], Awaitable[_T]]) -> _T:
    settings = load_client_settings(base_url=base_url, config_file=config_file)

    async def main() -> _T:
        return await run_query(settings, action)

    try:
        return run_command(main)
    except CommandInterruptedError as interrupted:
        exit_interrupted(interrupted.signum)


def _reports_errors(command: _F) -> _F:
    """Turn tcia-fetch errors into one stderr line and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_output(kwargs.get("output_format"))
            return command(*args, **kwargs)
        except TciaFetchError as exc:
            die(exc)

    return wrapper  # type: ignore[return-value]


def _emit(
    rows: Sequence[dict[str, object]],
    *,
    output_format: str,
    columns: str | None,
    default_columns: Sequence[str],
    known_columns: Sequence[str] = (),
    title: str | None = None,
) -> None:
    output = _output_path()
    if output_format == "parquet":
        _emit_parquet(rows, parse_columns(columns), known_columns or default_columns, output)
        return
    fmt: OutputFormat = "table"
    if output_format in ("json", "jsonl", "csv"):
        fmt = "json" if output_format == "json" else "jsonl" if output_format == "jsonl" else "csv"
    stream = io.StringIO() if output is not None else None
    render_rows(
        rows,
        output_format=fmt,
        columns=parse_columns(columns),
        default_columns=default_columns,
        known_columns=known_columns,
        title=title,
        stream=stream,
    )
    if output is not None and stream is not None:
        write_text_atomic_sync(output, stream.getvalue(), mode=0o644)


def _emit_parquet(
    rows: Sequence[dict[str, object]],
    columns: Sequence[str] | None,
    known: Sequence[str],
    output: Path | None,
) -> None:
    """The rows as Parquet (same dtypes as the notebook's DataFrames) to ``output`` or stdout."""
    if columns is not None:
        check_columns(columns, rows, known)
    frame = frames.rows_frame(rows, known)
    if columns is not None:
        frame = frame[[name for name in columns if name in frame.columns]]
    buffer = io.BytesIO()
    frames.write_parquet(frame, buffer)
    if output is not None:
        write_bytes_atomic_sync(output, buffer.getvalue(), mode=0o644)
    else:
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()


@click.group()
def query() -> None:
    """Everyday look-ups against the NBIA API (collections, patients, studies, series)."""


def _value_command(name: str, counts_key: str, help_text: str) -> Callable[[_F], _F]:
    """Shared body of the value-list commands (``--counts`` switches to *ValuesAndCounts)."""

    def decorate(function: _F) -> _F:
        function = click.option(
            "--counts", is_flag=True, help=f"Also show counts (get{counts_key}ValuesAndCounts; v4 only)."
        )(function)
        return query.command(name, help=help_text)(_common_options(_reports_errors(function)))  # type: ignore[return-value]

    return decorate


def _emit_values(
    result: ValueList | Sequence[ValueCount], keys: Sequence[str], *, output_format: str, columns: str | None
) -> None:
    """Print a value list (or its counts) with the value column(s) first."""
    _emit(
        _value_rows(result),
        output_format=output_format,
        columns=columns,
        default_columns=(*keys, "Count"),
        known_columns=(*keys, "Count", "Authorized"),
    )


def _value_rows(result: ValueList | Sequence[ValueCount]) -> list[dict[str, object]]:
    if isinstance(result, ValueList):
        return [dict(row) for row in result.rows]
    return [row.server_dict() for row in result]


@_value_command("collections", "Collection", "List collections with public images.")
def collections(
    counts: bool, base_url: str | None, config_file: Path | None, output_format: str, columns: str | None
) -> None:
    async def action(client: NBIAClient) -> ValueList | list[ValueCount]:
        return await client.collection_counts() if counts else await client.collections()

    result = _run(base_url, config_file, action)
    _emit_values(result, ("Collection",), output_format=output_format, columns=columns)


@click.option("--body-part", help="BodyPartExamined filter (case-insensitive on the server).")
@click.option("--collection", help="Collection filter.")
@_value_command("modalities", "Modality", "List modalities, optionally filtered.")
def modalities(
    counts: bool,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
    collection: str | None,
    body_part: str | None,
) -> None:
    async def action(client: NBIAClient) -> ValueList | list[ValueCount]:
        if counts:
            return await client.modality_counts(collection=collection, body_part=body_part)
        return await client.modalities(collection=collection, body_part=body_part)

    result = _run(base_url, config_file, action)
    _emit_values(result, ("Modality",), output_format=output_format, columns=columns)


@click.option("--modality", help="Modality filter.")
@click.option("--collection", help="Collection filter.")
@_value_command("body-parts", "BodyPart", "List body parts examined, optionally filtered.")
def body_parts(
    counts: bool,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
    collection: str | None,
    modality: str | None,
) -> None:
    async def action(client: NBIAClient) -> ValueList | list[ValueCount]:
        if counts:
            return await client.body_part_counts(collection=collection, modality=modality)
        return await client.body_parts(collection=collection, modality=modality)

    result = _run(base_url, config_file, action)
    _emit_values(
        result,
        (
            "BodyPartExamined",
            "BodyPart",
        ),
        output_format=output_format,
        columns=columns,
    )


@click.option("--body-part", help="BodyPartExamined filter.")
@click.option("--modality", help="Modality filter.")
@click.option("--collection", help="Collection filter.")
@_value_command("manufacturers", "Manufacturer", "List equipment manufacturers, optionally filtered.")
def manufacturers(
    counts: bool,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
    collection: str | None,
    modality: str | None,
    body_part: str | None,
) -> None:
    async def action(client: NBIAClient) -> ValueList | list[ValueCount]:
        if counts:
            return await client.manufacturer_counts(
                collection=collection, modality=modality, body_part=body_part
            )
        return await client.manufacturers(collection=collection, modality=modality, body_part=body_part)

    result = _run(base_url, config_file, action)
    _emit_values(result, ("Manufacturer",), output_format=output_format, columns=columns)


@query.command("patients")
@click.option("--collection", help="Collection filter.")
@click.option("--patient-id", help="PatientId filter.")
@_common_options
@_reports_errors
def patients(
    collection: str | None,
    patient_id: str | None,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
) -> None:
    """List patients (getPatient)."""
    rows: list[PatientRow] = _run(
        base_url, config_file, lambda c: c.patients(collection=collection, patient_id=patient_id)
    )
    _emit(
        [row.server_dict() for row in rows],
        output_format=output_format,
        columns=columns,
        default_columns=_PATIENT_COLUMNS,
        known_columns=_aliases(PatientRow),
    )


@query.command("studies")
@click.option("--collection", help="Collection filter.")
@click.option("--patient-id", help="PatientID filter.")
@click.option("--study-uid", help="StudyInstanceUID filter.")
@_common_options
@_reports_errors
def studies(
    collection: str | None,
    patient_id: str | None,
    study_uid: str | None,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
) -> None:
    """List studies (getPatientStudy)."""
    rows: list[StudyRow] = _run(
        base_url,
        config_file,
        lambda c: c.studies(collection=collection, patient_id=patient_id, study_uid=study_uid),
    )
    _emit(
        [row.server_dict() for row in rows],
        output_format=output_format,
        columns=columns,
        default_columns=_STUDY_COLUMNS,
        known_columns=_aliases(StudyRow),
    )


@query.command("series")
@click.option("--collection", help="Collection filter.")
@click.option("--patient-id", help="PatientID filter.")
@click.option("--study-uid", help="StudyInstanceUID filter.")
@click.option("--modality", help="Modality filter.")
@click.option("--body-part", help="BodyPartExamined filter.")
@click.option("--manufacturer", help="Manufacturer filter.")
@click.option("--model", "manufacturer_model", help="ManufacturerModelName filter.")
@click.option("--series-uid", help="SeriesInstanceUID filter.")
@click.option(
    "--where",
    "where_text",
    metavar="EXPR",
    help='Client-side filter over server column names, e.g. "ImageCount>50 and Modality=CT" '
    "(= != < <= > >= ~ contains, and/or/not, parentheses).",
)
@_common_options
@_reports_errors
def series(
    collection: str | None,
    patient_id: str | None,
    study_uid: str | None,
    modality: str | None,
    body_part: str | None,
    manufacturer: str | None,
    manufacturer_model: str | None,
    series_uid: str | None,
    where_text: str | None,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
) -> None:
    """List series (getSeries), optionally filtered further with --where.

    A query that matches nothing prints a note on stderr naming the filter to blame and the
    closest valid values (exit code 0: an empty listing is still an answer).
    """
    known = series_columns()
    filters = {
        "collection": collection,
        "patient_id": patient_id,
        "study_uid": study_uid,
        "modality": modality,
        "body_part": body_part,
        "manufacturer": manufacturer,
        "manufacturer_model": manufacturer_model,
        "series_uid": series_uid,
    }
    settings = load_client_settings(base_url=base_url, config_file=config_file)
    try:
        server_rows, finding = run_command(lambda: find_series(settings, filters, where_text, origin="query"))
    except CommandInterruptedError as interrupted:
        exit_interrupted(interrupted.signum)
    if finding is not None:
        click.echo(f"tcia-fetch: note: {shown(finding.message, keep_newlines=True)}", err=True)
    _emit(
        server_rows,
        output_format=output_format,
        columns=columns,
        default_columns=_SERIES_COLUMNS,
        known_columns=known,
    )


@query.command("series-size")
@click.argument("series_uid", metavar="SERIES_UID")
@click.option("--collection", help="Collection of the series (routes NLST to its own server).")
@_common_options
@_reports_errors
def series_size(
    series_uid: str,
    collection: str | None,
    base_url: str | None,
    config_file: Path | None,
    output_format: str,
    columns: str | None,
) -> None:
    """Show a series' total DICOM bytes and instance count (getSeriesSize)."""
    size = _run(base_url, config_file, lambda c: c.series_size(series_uid, collection=collection))
    if size is None:
        click.echo(
            f"error: series {series_uid}: unknown or not public (the server returned no size)", err=True
        )
        raise SystemExit(EXIT_SOME_FAILED)
    _emit(
        [size.server_dict()],
        output_format=output_format,
        columns=columns,
        default_columns=("TotalSizeInBytes", "ObjectCount"),
        known_columns=("TotalSizeInBytes", "ObjectCount"),
    )
