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
