"""Download progress in a notebook: one output that updates in place.

rich's live display needs ipywidgets in Jupyter and writes through an ``Output`` widget's
context manager, which only routes output correctly from the thread running the cell;
``tqdm.auto`` needs ipywidgets too. IPython's own display handles need nothing beyond the
kernel: ``display(obj, display_id=True)`` draws once and ``handle.update(obj)`` replaces it, in
JupyterLab, classic Notebook, VS Code and in notebooks executed by nbclient alike. The view is a
native HTML ``<progress>`` bar plus the same status line batch logs get, with that line as the
plain-text form for frontends that show no HTML.

Which display a download gets (:func:`pick_mode`): this notebook display inside a Jupyter
kernel; otherwise what ``tcia-fetch run`` does (a rich live bar on a terminal, periodic plain
lines in batch logs); nothing with ``progress=False``.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any, Literal

from tcia_fetch.engine.report import RunStats

__all__ = ["NotebookProgress", "in_jupyter", "pick_mode"]

Mode = Literal["notebook", "live", "lines", "quiet"]


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell); never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def pick_mode(progress: bool | None) -> Mode:
    """``progress=False``: quiet; in Jupyter: the notebook bar; else the CLI's live bar or log lines."""
    if progress is False:
        return "quiet"
    if in_jupyter():
        return "notebook"
    return "live" if sys.stderr.isatty() else "lines"


class _View:
    """What the display shows: an HTML progress bar, and the status line as plain text."""

    def __init__(self, line: str, done: int, total: int, finished: bool) -> None:
        self.line = line
        self.done = done
        self.total = total
        self.finished = finished

    def _repr_html_(self) -> str:
        value = f' value="{self.done}" max="{self.total}"' if self.total else ""
        state = "finished" if self.finished else "downloading"
        return (
            f'<div class="tcia-fetch-progress"><b>tcia-fetch</b> {state} '
            f'<progress{value} style="width: 40%"></progress><br>'
            f"<code>{html.escape(self.line)}</code></div>"
        )

    def __repr__(self) -> str:
        return f"tcia-fetch {'finished' if self.finished else 'downloading'}: {self.line}"


class NotebookProgress:
    """A Jupyter display of one run's :class:`RunStats`, redrawn by :meth:`update`.

    Create it in the thread that runs the cell (the display belongs to that cell); ``update``
    only sends something when the status line changed.
    """

    def __init__(self, stats: RunStats) -> None:
        from IPython.display import display as _display

        display: Any = _display  # untyped in IPython
        self._stats = stats
        self._started = time.monotonic()
        self._last = ""
        self._handle: Any = display(self._view(finished=False), display_id=True)

    def _view(self, *, finished: bool) -> _View:
        from tcia_fetch.cli.progress import progress_line  # rich: only once a download shows progress

        stats = self._stats
        line = progress_line(stats, time.monotonic() - self._started)
        return _View(line, stats.dicom_bytes, stats.planned_bytes, finished)

    def update(self, *, finished: bool = False) -> None:
        """Redraw in place if anything changed."""
        view = self._view(finished=finished)
        key = f"{finished}|{view.line.split(' | ETA')[0]}"
        if key != self._last and self._handle is not None:
            self._last = key
            self._handle.update(view)

    def finish(self) -> None:
        """Draw the final state."""
        self.update(finished=True)
