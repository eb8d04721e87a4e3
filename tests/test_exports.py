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
