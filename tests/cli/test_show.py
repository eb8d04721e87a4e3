"""Server text on the terminal: no escape sequence, no rich markup, no credential gets through."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Console

from tcia_fetch.cli.progress import ProgressReporter
from tcia_fetch.cli.render import render_rows
from tcia_fetch.cli.runcmd import print_report
from tcia_fetch.engine.report import RunEvent, RunReport, RunStats, SeriesFailure
from tcia_fetch.redaction import register_secret
from tcia_fetch.testing._faults import HOSTILE_TEXT

_TERMINAL_ACTIVE = ("\x1b", "\x07", "\x9b", "\u202e")
ROWS: list[dict[str, object]] = [
    {"Collection": HOSTILE_TEXT, "SeriesDescription": HOSTILE_TEXT, "ImageCount": -3},
]


def _render(fmt: str) -> str:
    out = io.StringIO()
    render_rows(ROWS, output_format=fmt, columns=None, default_columns=["Collection"], stream=out)  # type: ignore[arg-type]
    return out.getvalue()


def _assert_inert(text: str) -> None:
    for char in _TERMINAL_ACTIVE:
        assert char not in text, repr(char)


def test_a_table_shows_hostile_text_as_text() -> None:
    text = _render("table")
    _assert_inert(text)
    assert "[link=http://evil.example/]click[/link]" in text  # printed, not interpreted as markup
    assert "\\x1b[2J" in text


def test_json_escapes_controls_and_keeps_the_data() -> None:
    for fmt in ("json", "jsonl"):
        text = _render(fmt)
        _assert_inert(text)
        first = json.loads(text.splitlines()[0]) if fmt == "jsonl" else json.loads(text)[0]
        assert first == ROWS[0]  # the same characters, only escaped


def test_csv_defuses_formulas_and_controls_but_not_numbers() -> None:
    text = _render("csv")
    _assert_inert(text)
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["SeriesDescription"].startswith("'=HYPERLINK(")
    assert row["ImageCount"] == "-3"


def test_progress_events_and_the_summary_print_no_markup_controls_or_secrets() -> None:
    token = "tok-9f8e7d6c5b4a3210"
    register_secret(token)
    stream = io.StringIO()
    reporter = ProgressReporter(RunStats(), mode="lines", stream=stream)
    reason = f"HTTP 400: {HOSTILE_TEXT} Authorization: Bearer {token}"
    reporter.on_event(RunEvent("failed", "1.2.3", reason))
    reporter.on_event(RunEvent("warning", "", HOSTILE_TEXT))
    reporter.on_event(RunEvent("retry", "1.2.3", reason, 1.0))
    report = RunReport(
        run_id="r", destination="/data", base_url="http://x/", started_at="now", planned=1, failed=1
    )
    report.failures.append(SeriesFailure("1.2.3", reason, "rejected", 1))
    report.plan_errors.append(reason)
    print_report(report, console=Console(file=stream, highlight=False, width=200))
    text = stream.getvalue()
    _assert_inert(text)
    assert token not in text
    assert text.count("[link=http://evil.example/]") >= 4
