"""Hostile series rows (issue 14): the fake server's BAD_UID_ROWS and ROW_VALUE faults.

Applied to the rows of ``getSeries``, ``getUpdatedSeries`` and ``getSeriesMetadata`` answers just
before they are encoded, so every format (JSON, CSV) carries them. See ``FaultKind`` for the
parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from tcia_fetch.testing._faults import FaultKind, FaultState

__all__ = ["hostile_rows"]


def hostile_rows(faults: FaultState, rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """``rows`` after the row faults in force (a new list; the catalog's rows are not touched)."""
    uids = [str(row.get("SeriesInstanceUID", "")) for row in rows]
    rules = faults.row_faults(uids)
    out = [dict(row) for row in rows]
    if not rules:
        return out
    for rule in rules:
        if rule.kind is FaultKind.ROW_VALUE:
            column = str(rule.params["column"])
            value = rule.params["value"]
            for row in out:
                if rule.series_uid is None or row.get("SeriesInstanceUID") == rule.series_uid:
                    if value is None:
                        row.pop(column, None)
                    else:
                        row[column] = value
        elif rule.kind is FaultKind.BAD_UID_ROWS:
            template = dict(out[0]) if out else {}
            texts = rule.params["uids"]
            if not isinstance(texts, list | tuple):  # one text, as ``--fault BAD_UID_ROWS,uids=x`` gives
                texts = (texts,)
            out.extend({**template, "SeriesInstanceUID": str(text)} for text in texts)
    return out
