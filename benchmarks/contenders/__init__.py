"""The contenders: one small driver per tool (see each module for exactly what it runs)."""

from __future__ import annotations

from benchmarks.contenders.aria2 import Aria2Contender
from benchmarks.contenders.base import Contender, RunContext
from benchmarks.contenders.curl import CurlContender
from benchmarks.contenders.tciafetch import TciaFetchContender
from benchmarks.contenders.tciautils import TciaUtilsContender

__all__ = [
    "FAMILIES",
    "Aria2Contender",
    "Contender",
    "CurlContender",
    "RunContext",
    "TciaFetchContender",
    "TciaUtilsContender",
    "make_contender",
]

FAMILIES: dict[str, type[Contender]] = {
    TciaFetchContender.family: TciaFetchContender,
    TciaUtilsContender.family: TciaUtilsContender,
    Aria2Contender.family: Aria2Contender,
    CurlContender.family: CurlContender,
}


def make_contender(spec: str) -> Contender:
    """``family`` or ``family@N`` → a contender (ValueError for an unknown family or bad N)."""
    family, _, count = spec.partition("@")
    try:
        kind = FAMILIES[family]
    except KeyError as exc:
        raise ValueError(f"unknown contender {family!r}; known: {sorted(FAMILIES)}") from exc
    if not count:
        return kind()
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"contender {spec!r}: the number after @ must be a positive integer")
    return kind(int(count))
