"""The public surface is exactly what ``tcia_fetch.__all__`` says, sorted, and all of it imports."""

from __future__ import annotations

import tcia_fetch


def test_all_is_sorted_and_importable() -> None:
    names = [name for name in tcia_fetch.__all__ if name != "__version__"]
    assert names == sorted(names)
    for name in tcia_fetch.__all__:
        assert hasattr(tcia_fetch, name), name


def test_public_errors_share_one_root() -> None:
    for name in ("InputError", "IntegrityError", "SeriesUnavailableError", "StorageError", "TransportError"):
        assert issubclass(getattr(tcia_fetch, name), tcia_fetch.TciaFetchError)


NOTEBOOK_FUNCTIONS = (
    "collections",
    "modalities",
    "body_parts",
    "manufacturers",
    "patients",
    "studies",
    "series",
    "series_size",
    "download",
)


def test_notebook_surface_is_public_with_async_twins() -> None:
    for name in NOTEBOOK_FUNCTIONS:
        assert name in tcia_fetch.__all__ and callable(getattr(tcia_fetch, name)), name
        assert f"{name}_async" in tcia_fetch.__all__, name
    for name in ("configure", "DownloadReport", "EmptyResultWarning", "MissingDependencyError"):
        assert name in tcia_fetch.__all__, name
    assert issubclass(tcia_fetch.DownloadReport, tcia_fetch.RunReport)
    assert issubclass(tcia_fetch.EmptyResultWarning, UserWarning)
    assert issubclass(tcia_fetch.MissingDependencyError, tcia_fetch.TciaFetchError)
    assert issubclass(tcia_fetch.MissingDependencyError, ImportError)


def test_testing_kit_offers_a_background_server() -> None:
    import tcia_fetch.testing

    assert {"serve_in_background", "BackgroundServer"} <= set(tcia_fetch.testing.__all__)


def test_the_public_names_load_lazily_and_plan_and_series_stay_functions() -> None:
    """Importing one internal module does not pay for the whole engine, and the two public
    functions that share their names with subpackages stay functions whatever is imported
    later. In a fresh interpreter: this one has imported everything already."""
    import subprocess
    import sys

    code = (
        "import inspect, sys\n"
        "import tcia_fetch.store.journal\n"
        "assert 'aiohttp' not in sys.modules and 'tcia_fetch.engine.run' not in sys.modules\n"
        "import tcia_fetch\n"
        "import tcia_fetch.plan.spool, tcia_fetch.series.recheck, tcia_fetch.notebook\n"
        "assert inspect.iscoroutinefunction(tcia_fetch.plan), tcia_fetch.plan\n"
        "assert tcia_fetch.series is tcia_fetch.notebook.series, tcia_fetch.series\n"
        "from tcia_fetch import RunOptions, plan, series\n"
        "assert plan is tcia_fetch.plan and series is tcia_fetch.series and RunOptions\n"
        "assert 'download' in dir(tcia_fetch)\n"
        "try:\n"
        "    tcia_fetch.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
