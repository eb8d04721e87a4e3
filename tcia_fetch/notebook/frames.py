"""Server rows as pandas DataFrames: the only module that imports pandas (lazily).

``import tcia_fetch`` and the CLI never pay for pandas: it is imported on the first call that
builds a DataFrame, and a missing install is a :class:`MissingDependencyError` that says which
extra to install. Columns keep the server's names and order; counts and sizes become nullable
``Int64`` (the server omits nulls, so a plain ``int64`` column would turn into floats), and
``MM-DD-YYYY`` dates become ``datetime64[ns]``. Values are parsed with the same functions the
row models use (:mod:`tcia_fetch.api.parse`), so a DataFrame and the CLI's output agree.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from tcia_fetch.api.parse import coerce_count, parse_server_date
from tcia_fetch.errors import MissingDependencyError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COUNT_COLUMNS",
    "DATE_COLUMNS",
    "empty_counts",
    "failures_frame",
    "load_pandas",
    "read_csv",
    "require_parquet",
    "rows_frame",
    "write_parquet",
]

#: Columns holding counts or byte sizes (nullable integers).
COUNT_COLUMNS = frozenset(
    {
        "ImageCount",
        "FileSize",
        "SeriesCount",
        "Count",
        "count",
        "Authorized",
        "TotalSizeInBytes",
        "ObjectCount",
    }
)
#: Columns holding the server's dates (``MM-DD-YYYY``, or legacy ``YYYY-MM-DD[ time]``).
DATE_COLUMNS = frozenset({"SeriesDate", "StudyDate", "DateReleased", "MaxSubmissionTimestamp", "TimeStamp"})

_INSTALL_HINT = "pip install 'tcia-fetch[pandas]'"


def load_pandas() -> Any:
    """The pandas module, or a :class:`MissingDependencyError` naming the extra to install."""
    try:
        import pandas
    except ImportError as exc:
        raise MissingDependencyError(f"this needs pandas, which is not installed: {_INSTALL_HINT}") from exc
    return pandas


def _columns(rows: Iterable[Mapping[str, object]], fallback: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen) if seen else list(fallback)


def _count(value: object, column: str) -> int | None:
    return None if value is None else coerce_count(value, field=column)


def _date(value: object, column: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    day = parse_server_date(value, field=column)
    return dt.datetime(day.year, day.month, day.day)


def rows_frame(rows: Sequence[Mapping[str, object]], columns: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame of server rows; ``columns`` shapes an empty result (same columns, same dtypes)."""
    pandas = load_pandas()
    data: dict[str, Any] = {}
    for name in _columns(rows, columns):
        values = [row.get(name) for row in rows]
        if name in COUNT_COLUMNS:
            data[name] = pandas.array([_count(v, name) for v in values], dtype="Int64")
        elif name in DATE_COLUMNS:
            data[name] = pandas.array([_date(v, name) for v in values], dtype="datetime64[ns]")
        elif not rows:
            data[name] = pandas.array([], dtype="string")
        else:
            data[name] = values
    return pandas.DataFrame(data, columns=list(data))


def failures_frame(failures: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """A run report's failures (``SeriesInstanceUID``, ``reason``, ``reference``, ...) as a DataFrame."""
    rows = list(failures)
    frame = rows_frame(rows, ("SeriesInstanceUID", "reason", "reference", "attempts", "origin"))
    if "attempts" in frame.columns:
        frame["attempts"] = frame["attempts"].astype("Int64")
    return frame


def read_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A CSV file (e.g. a destination's ``metadata.csv``) as a DataFrame."""
    return load_pandas().read_csv(path)


def empty_counts(length: int) -> Any:
    """A nullable integer column of ``length`` missing values."""
    return load_pandas().array([None] * length, dtype="Int64")


def require_parquet() -> None:
    """Raise :class:`MissingDependencyError` unless pandas and pyarrow are both installed."""
    load_pandas()
    try:
        import pyarrow  # noqa: F401  (pandas' Parquet engine; imported here only to fail clearly)
    except ImportError as exc:
        raise MissingDependencyError(
            f"Parquet output needs pyarrow, which is not installed: {_INSTALL_HINT}"
        ) from exc


def write_parquet(frame: pd.DataFrame, target: str | IO[bytes]) -> None:
    """Write ``frame`` as Parquet (pyarrow engine); a missing pyarrow names the extra."""
    require_parquet()
    frame.to_parquet(target, engine="pyarrow", index=False)
