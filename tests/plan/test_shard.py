"""Shard assignment: balanced, independent of the rest of the job, stable as N grows; budget splits."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcia_fetch.errors import InputError
from tcia_fetch.plan.shard import Shard, parse_shard, shard_of, split_count, split_rate

UIDS = st.lists(st.integers(1, 10**12), min_size=3, max_size=10).map(lambda parts: ".".join(map(str, parts)))


def _random_uids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "1.3.6.1.4.1.14519.5.2.1." + ".".join(str(rng.randrange(1, 10**12)) for _ in range(4))
        for _ in range(count)
    ]


def test_shares_are_balanced_within_five_percent_on_100k_uids() -> None:
    uids = _random_uids(100_000, seed=11)
    for count in (2, 3, 7, 16):
        sizes = Counter(shard_of(uid, count) for uid in uids)
        expected = len(uids) / count
        assert sorted(sizes) == list(range(count))
        worst = max(abs(size - expected) / expected for size in sizes.values())
        assert worst < 0.05, (count, sizes)


@settings(max_examples=100)
@given(uid=UIDS, others=st.lists(UIDS, max_size=20), count=st.integers(1, 64))
def test_a_uid_shard_depends_on_the_uid_and_n_only(uid: str, others: list[str], count: int) -> None:
    # A job that grows (or shrinks) never moves a series already placed.
    before = shard_of(uid, count)
    for other in others:
        shard_of(other, count)
    assert shard_of(uid, count) == before
    assert 0 <= before < count
    assert sum(Shard(k, count).owns(uid) for k in range(count)) == 1


@settings(max_examples=300)
@given(uid=UIDS, count=st.integers(1, 200))
def test_adding_a_shard_moves_series_only_onto_the_new_shard(uid: str, count: int) -> None:
    before, after = shard_of(uid, count), shard_of(uid, count + 1)
    assert after in (before, count)


def test_growing_from_8_to_9_shards_moves_about_one_ninth() -> None:
    uids = _random_uids(20_000, seed=5)
    moved = sum(shard_of(uid, 8) != shard_of(uid, 9) for uid in uids)
    assert 0.09 < moved / len(uids) < 0.13  # ~1/9; `mod N` would move ~8/9


def test_assignment_is_pinned_across_versions_and_machines() -> None:
    # BLAKE2b + jump hash: a changed function would silently re-split running arrays.
    uid = "1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991"
    assert [shard_of(uid, n) for n in (1, 2, 4, 16, 1000)] == [0, 0, 0, 7, 152]
    assert [shard_of(u, 16) for u in ("1.2.3", "1.2.4", "1.2.840.10008.5.1.4.1.1.2", "2.25.1")] == [
        4,
        11,
        11,
        8,
    ]


@pytest.mark.parametrize(
    ("text", "expected"), [("0/1", Shard(0, 1)), ("3/16", Shard(3, 16)), (" 15 / 16 ", Shard(15, 16))]
)
def test_parse_shard_accepts_k_of_n(text: str, expected: Shard) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("3/2", "between 0 and 1"),
        ("2/2", "between 0 and 1"),
        ("-1/4", "between 0 and 3"),
        ("a/b", "write K/N"),
        ("0/0", "between 1 and"),
        ("3", "write K/N"),
        ("", "write K/N"),
        ("1/-4", "between 1 and"),
    ],
)
def test_parse_shard_refuses_bad_values_naming_the_option(text: str, needle: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_shard(text)
    assert str(caught.value).startswith("--shard:")
    assert needle in str(caught.value)
    assert caught.value.exit_code == 2


@settings(max_examples=300)
@given(total=st.integers(1, 256), count=st.integers(1, 300))
def test_concurrency_shares_add_up_to_the_total_and_give_everyone_a_slot(total: int, count: int) -> None:
    shares = [split_count(total, count, k) for k in range(count)]
    assert min(shares) >= 1
    assert max(shares) - min(shares) <= 1
    assert sum(shares) == max(total, count)


@settings(max_examples=100)
@given(total=st.floats(0.001, 1e12), count=st.integers(1, 1000))
def test_rate_shares_add_up_to_the_total(total: float, count: int) -> None:
    share = split_rate(total, count)
    assert share is not None
    assert share * count == pytest.approx(total, rel=1e-9)
    assert split_rate(None, count) is None
