"""Where each series of a run is published: its layout path, unless another series holds it.

The descriptive layout names a series by number, description and the last five characters of its
UID, so two series of one study can render the same path (issue 14, item 9). Publishing never
overwrites, so the second one used to fail with ``final-path-exists`` on every rerun. Now:

* a series the journal recorded under a path (a damaged series being repaired) goes back to that
  path, whatever the layout renders today: a published tree keeps its place;
* a layout whose paths hold the whole series UID (classic, flat, every custom template) cannot
  collide between two series, so its path is used as rendered; something already there is not
  another series of this job, and publishing refuses it as before;
* otherwise (descriptive) a path that exists, or that another series of this process is about to
  publish, is passed over for :func:`~tcia_fetch.store.layout.disambiguated` (``<name>~<hash>``).

Whichever series publishes first keeps the plain name; the journal records each series' path, so
reruns, metadata.csv and the catalog stay put. Only a local directory is checked: in a bucket the
object key ends with the series UID, so keys never collide.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

from tcia_fetch.store.destination import STATE_DIR_NAME, Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.layout import RESERVED_ROOT_NAMES, disambiguated, is_reserved_root_name, parse_layout
from tcia_fetch.store.reconcile import Damage

__all__ = ["SeriesPaths", "blocked_root_outputs", "recorded_damaged_paths"]


class SeriesPaths:
    """Chooses and reserves series paths for one process; thread-safe (:meth:`choose` may block)."""

    def __init__(self, layout: str, home: object, recorded: Mapping[str, str] | None = None) -> None:
        self._layout = parse_layout(layout)
        self._home = home if isinstance(home, Destination) else None
        self._recorded = dict(recorded or {})
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def known(self, series_uid: str, row: Mapping[str, object]) -> PurePosixPath | None:
        """The path when choosing it needs no look at the destination; None when it does.

        Non-blocking: the worker calls it on the event loop and saves a thread hand-off per
        series for every layout but the descriptive one on a directory.
        """
        recorded = self._recorded.get(series_uid)
        # ...unless an older version put it where our own files belong (a collection "metadata.csv")
        if recorded and not is_reserved_root_name(PurePosixPath(recorded).parts[0]):
            return PurePosixPath(recorded)
        if self._home is None or self._layout.unique_per_series:
            return self._layout.render(row)
        return None

    def choose(self, series_uid: str, row: Mapping[str, object]) -> PurePosixPath:
        """The path to publish ``series_uid`` under; call :meth:`release` once it is published.

        Blocking (``lstat`` on the destination): call it from a worker thread.
        """
        known = self.known(series_uid, row)
        if known is not None:
            return known
        planned = self._layout.render(row)
        with self._lock:
            for candidate in (planned, disambiguated(planned, series_uid)):
                key = candidate.as_posix()
                if key not in self._claimed and not self._occupied(candidate):
                    self._claimed.add(key)
                    return candidate
        return planned  # both taken: publishing refuses it (final-path-exists) and says where

    def release(self, relative: PurePosixPath) -> None:
        """Forget a reservation (the series is published, or its attempt failed)."""
        with self._lock:
            self._claimed.discard(relative.as_posix())

    def _occupied(self, relative: PurePosixPath) -> bool:
        assert self._home is not None
        try:
            os.lstat(self._home.final_path(relative))
        except FileNotFoundError:
            return False
        except OSError:
            return False  # publishing meets the same error and reports it with the path
        return True


def blocked_root_outputs(home: object) -> dict[str, str]:
    """Root files a directory stands in the way of, each with what to do (name → message).

    Versions before reserved names published a collection called ``metadata.csv`` as a directory
    of that name, after which every run died writing metadata.csv (EISDIR, exit 3). Such an output
    is now skipped and reported (exit 1) with the way out; every other output is still written.
    Blocking (``stat``): call it from a worker thread.
    """
    if not isinstance(home, Destination):
        return {}  # in a bucket, "metadata.csv" and "metadata.csv/..." are independent keys
    found: dict[str, str] = {}
    for name in sorted(RESERVED_ROOT_NAMES - {STATE_DIR_NAME}):
        path = home.root / name
        if path.is_dir():
            found[name] = (
                f"{path} is a directory, so tcia-fetch cannot write its {name}: an older version "
                f"published a collection named {name!r} there. Move that directory away, run "
                f"'tcia-fetch verify {home.root}', then run the job again: its series are fetched "
                f"again under _{name}/"
            )
    return found


def recorded_damaged_paths(journal: Journal, found: Iterable[Damage]) -> dict[str, str]:
    """Where each damaged series was published: a repair puts it back there (blocking)."""
    paths = {record.series_uid: record.path for record in journal.iter_latest("damaged") if record.path}
    paths.update((item.series_uid, item.path) for item in found if item.path)
    return paths
