"""A catalog of any size (600,000 series and more) derived lazily from the seed, never built whole.

:meth:`Catalog.generate` builds every :class:`SeriesEntry` up front, which is right for tests
(stable, seeded UIDs and bytes) but costs memory and minutes at the scale of TCIA's largest
collection (~593,000 series). :class:`LazyCatalog` derives series number ``i`` on demand from
``(seed, i)``: its UID encodes the index (``<root>.9.<seed>.<i>``), so a lookup by UID is a
parse, not a table; ``series`` is a read-only sequence that builds each entry when indexed.
Entries are rebuilt on each access (cheap for the small series a scale test serves) and share
one pixel store.

Sizes can follow the real archive (``sizes="real"``): a 64-point table of (instances, bytes per
instance) pairs taken at evenly spaced quantiles of series size from
``reference/data/series-mix-sample.csv`` (IDC's public series index, 20,000 series) is committed
below, so nothing is read at run time; series ``i`` draws one pair with its own seeded RNG.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from typing import Final, Literal, overload

from tcia_fetch.testing._catalog import (
    _COLLECTION_NAMES,
    _UID_ROOT,
    Catalog,
    SeriesEntry,
    _digits,
    _make_series,
    _Study,
)
from tcia_fetch.testing._pixels import PixelStore

__all__ = ["REAL_SIZE_QUANTILES", "LazyCatalog"]

#: (instances, bytes per instance) at the 64 quantiles (0.5/64 ... 63.5/64) of series size in
#: series-mix-sample.csv. Half of all series are one instance under 0.7 MB; the top quantiles are
#: single multi-hundred-MB objects (whole-slide images) and CT/MR stacks of ~0.5 MB slices.
REAL_SIZE_QUANTILES: Final[tuple[tuple[int, int], ...]] = (
    (1, 3600), (1, 22600), (1, 62200), (1, 136400), (1, 239100), (1, 428700), (1, 455400),
    (1, 473300), (1, 485600), (1, 495200), (1, 503800), (1, 513400), (1, 525500), (1, 526600),
    (1, 535300), (1, 562300), (1, 580200), (1, 594200), (1, 601000), (1, 609700), (1, 620100),
    (1, 630600), (1, 641700), (1, 657900), (1, 693900), (2, 526450), (3, 420967), (2, 1140750),
    (2, 1304300), (2, 1499850), (1, 4881100), (13, 543862), (1, 9001800), (15, 788920),
    (1, 15285600), (60, 287332), (160, 137527), (50, 528170), (60, 530687), (1, 35968600),
    (144, 302356), (94, 525721), (1, 56426000), (116, 528089), (126, 526590), (103, 689062),
    (143, 526660), (150, 526697), (1, 82010100), (161, 526438), (1, 87431400), (1, 90967600),
    (1, 94402200), (1, 99309400), (1, 103777400), (1, 108609400), (1, 114642700),
    (1, 120703300), (244, 526805), (265, 526976), (1, 164331500), (1, 186266400),
    (1, 251265900), (1, 581167900),
)  # fmt: skip


class _LazySeries(Sequence[SeriesEntry]):
    """``catalog.series`` of a :class:`LazyCatalog`: entries built when indexed or iterated."""

    def __init__(self, catalog: LazyCatalog) -> None:
        self._catalog = catalog

    def __len__(self) -> int:
        return self._catalog.count

    @overload
    def __getitem__(self, index: int) -> SeriesEntry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SeriesEntry]: ...
    def __getitem__(self, index: int | slice) -> SeriesEntry | Sequence[SeriesEntry]:
        if isinstance(index, slice):
            return [self._catalog.entry(i) for i in range(*index.indices(self._catalog.count))]
        if index < 0:
            index += self._catalog.count
        if not 0 <= index < self._catalog.count:
            raise IndexError(index)
        return self._catalog.entry(index)

    def __iter__(self) -> Iterator[SeriesEntry]:
        return (self._catalog.entry(i) for i in range(self._catalog.count))


class LazyCatalog(Catalog):
    """``count`` series in one or more collections, ``series_per_study`` per study, derived on demand."""

    def __init__(
        self,
        *,
        count: int,
        seed: int = 0,
        collections: int = 1,
        series_per_study: int = 100,
        instances_per_series: tuple[int, int] = (1, 1),
        instance_bytes: tuple[int, int] = (2_000, 2_000),
        sizes: Literal["range", "real"] = "range",
        pixel_cache_bytes: int = 64 * 1024 * 1024,
        compression_level: int = 1,
    ) -> None:
        if count < 1 or collections < 1 or series_per_study < 1:
            raise ValueError("need at least one series, collection and series per study")
        if min(instances_per_series) < 1 or min(instance_bytes) < 1:
            raise ValueError("instances_per_series and instance_bytes must be positive ranges")
        self.count = count
        self.seed = seed
        self._collections = collections
        self._series_per_study = series_per_study
        self._instances = instances_per_series
        self._bytes = instance_bytes
        self._sizes = sizes
        self._prefix = f"{_UID_ROOT}.9.{seed}."
        self.store = PixelStore(max_bytes=pixel_cache_bytes, compression_level=compression_level)
        self.series = _LazySeries(self)  # type: ignore[assignment]  # a Sequence, never a list

    def uid(self, index: int) -> str:
        """The UID of series ``index`` (it encodes the index: lookups need no table)."""
        return f"{self._prefix}{index}"

    def get(self, uid: str) -> SeriesEntry | None:
        if not uid.startswith(self._prefix):
            return None
        tail = uid[len(self._prefix) :]
        if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
            return None
        index = int(tail)
        return self.entry(index) if index < self.count else None

    def __len__(self) -> int:
        return self.count

    def warm(self, *, md5: bool = False) -> None:
        """Nothing to warm: entries are not kept, each request derives (and templates) its own."""

    @property
    def collections(self) -> list[str]:
        return [self._collection_name(index) for index in range(min(self._collections, self.count))]

    def _collection_name(self, index: int) -> str:
        base_name, _ = _COLLECTION_NAMES[index % len(_COLLECTION_NAMES)]
        lap = index // len(_COLLECTION_NAMES)
        return f"{base_name}-{lap}" if lap else base_name

    def _study(self, study_index: int) -> _Study:
        collection_index = study_index % self._collections
        rng = random.Random(f"{self.seed}/lazy-study/{study_index}")
        _, prefix = _COLLECTION_NAMES[collection_index % len(_COLLECTION_NAMES)]
        return _Study(
            collection_index=collection_index,
            collection=self._collection_name(collection_index),
            patient_id=f"{prefix}-{study_index + 1:06d}",
            patient_sex=rng.choice(("M", "F")),
            patient_age=f"{rng.randint(18, 89):03d}Y",
            study_uid=f"{_UID_ROOT}.8.{_digits(f'{self.seed}/lazy-study/{study_index}', 30)}",
            study_date=dt.date(1995, 1, 1) + dt.timedelta(days=rng.randint(0, 9000)),
            study_description=rng.choice(("CT CHEST W CONTRAST", "PET CT WB", "MRI PELVIS", "")),
            study_id=str(rng.randint(1, 99999)),
        )

    def entry(self, index: int) -> SeriesEntry:
        """Series number ``index``, built from the seed (the same entry every time)."""
        instances, size = self._instances, self._bytes
        if self._sizes == "real":
            rng = random.Random(f"{self.seed}/lazy-size/{index}")
            count, per_instance = REAL_SIZE_QUANTILES[rng.randrange(len(REAL_SIZE_QUANTILES))]
            instances, size = (count, count), (per_instance, per_instance)
        return _make_series(
            seed=self.seed,
            index=index,
            study=self._study(index // self._series_per_study),
            uid=self.uid(index),
            instances_per_series=instances,
            instance_bytes=size,
            store=self.store,
        )
