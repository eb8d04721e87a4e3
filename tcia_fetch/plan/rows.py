"""Server rows the planner cannot use: how one bad row becomes one failed series, never a dead job.

Data from the server is never "bad input" (exit 2 is for what the user wrote). A ``getSeries`` or
``getSeriesMetadata`` row whose ``SeriesInstanceUID`` is not a DICOM UID (``../../../etc/evil``,
empty, 300 characters, control characters), or whose columns do not fit their types, names a
series that cannot be fetched; every other row of the same answer still can. Such a row becomes a
failed series with reference :data:`BAD_ROW_REFERENCE` and a reason saying which column is wrong.

A bad UID is never used as a path, a URL parameter or a terminal string. It is identified in
reports and the journal by :func:`bad_uid_label`: printable, bounded, deterministic (so a rerun
reports the same series again, not a new one) and never itself a valid UID (so it cannot stand
for a real series).
"""

from __future__ import annotations

import hashlib

from tcia_fetch.uid import uid_problem

__all__ = ["BAD_ROW_REFERENCE", "bad_uid_label", "series_uid_problem"]

#: The failure reference of a series whose server row cannot be used.
BAD_ROW_REFERENCE = "bad-server-row"

_LABEL_CHARS = 80
_HASH_CHARS = 12
_EMPTY_LABEL = "(empty SeriesInstanceUID)"
_MISSING_LABEL = "(no SeriesInstanceUID)"


def series_uid_problem(uid: str) -> str | None:
    """What makes a server-sent series UID unusable, or None when it is a valid DICOM UID."""
    problem = uid_problem(uid)
    if problem is None:
        return None
    return f"the server sent SeriesInstanceUID {bad_uid_label(uid)} ({problem})"


def bad_uid_label(uid: str | None) -> str:
    """A stable, printable, bounded name for a series whose UID text is unusable.

    Non-printable characters are escaped (``\\x1b``), and a long text is cut and followed by
    ``~`` and a hash of the whole text, so two long UIDs differing only at the end stay apart.
    The result always holds a character a UID cannot (a quote, ``~`` or ``(``), so it never
    collides with a real series in the journal.
    """
    if uid is None:
        return _MISSING_LABEL
    if uid == "":
        return _EMPTY_LABEL
    escaped = uid.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    if len(escaped) <= _LABEL_CHARS:
        return f"'{escaped}'"
    digest = hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"'{escaped[:_LABEL_CHARS]}'~{digest}"
