"""Hostile archives: the generated corpus, each case fed to a real SeriesExtractor (E4-E9, B3, B4).

The corpus generator (``tests/series/hostile.py``) and the per-case judge (``run_case`` in
``tests/series/test_hostile.py``: a staging directory ringed with sentinel files, a time
bound, a Python-memory bound for bombs, the expected error class) belong to the series tests;
the campaign reuses them, so it needs a source checkout (they are imported lazily, with a
clear error otherwise). Figures: cases tried and rejected per family; accepted, escapes,
too slow, too much memory and wrong-error counts (all must be 0).
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HostileResult", "run_hostile"]

_CHUNK_SIZES = (7, 4096, 1 << 16, 256 << 10)


@dataclass
class HostileResult:
    """What the corpus did to the extractor."""

    tried: int = 0
    rejected: int = 0
    accepted: int = 0
    escapes: int = 0
    too_slow: int = 0
    too_much_memory: int = 0
    wrong_error: int = 0
    families: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    slowest_case_s: float = 0.0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "tried": self.tried,
            "rejected": self.rejected,
            "accepted": self.accepted,
            "escapes": self.escapes,
            "too_slow": self.too_slow,
            "too_much_memory": self.too_much_memory,
            "wrong_error": self.wrong_error,
            "families": dict(sorted(self.families.items())),
            "slowest_case_s": round(self.slowest_case_s, 3),
            "problems": self.problems[:10],
            "duration_s": round(self.duration_s, 1),
        }


def _corpus_tools() -> tuple[Callable[..., Iterator[Any]], Callable[[Any, Path, int], list[str]]]:
    try:
        from tests.series.hostile import generate
        from tests.series.test_hostile import run_case
    except ImportError as exc:  # pragma: no cover - only outside a source checkout
        raise RuntimeError(
            "the hostile corpus lives in tests/series/hostile.py: run the campaign from a source "
            f"checkout with the repository root on PYTHONPATH ({exc})"
        ) from exc
    return generate, run_case


def run_hostile(
    count: int, workdir: Path, *, seed: int = 0, progress: Callable[[str], None] | None = None
) -> HostileResult:
    """Feed ``count`` hostile cases (round-robin over every family) to the extractor and judge each."""
    generate, run_case = _corpus_tools()
    result = HostileResult()
    rng = random.Random(seed)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    for index, case in enumerate(generate(count, seed=seed)):
        body = case.body
        sizes = [*_CHUNK_SIZES, *([1] if len(body) < 20_000 else [])]
        chunk = rng.choice(sizes)
        case_started = time.perf_counter()
        problems = run_case(case, workdir / f"case-{index}", chunk)
        result.slowest_case_s = max(result.slowest_case_s, time.perf_counter() - case_started)
        shutil.rmtree(workdir / f"case-{index}", ignore_errors=True)
        result.tried += 1
        result.families[case.family] += 1
        if not any(problem == "ACCEPTED" for problem in problems):
            result.rejected += 1
        for problem in problems:
            if problem == "ACCEPTED":
                result.accepted += 1
            elif problem.startswith("touched outside"):
                result.escapes += 1
            elif problem.startswith("took"):
                result.too_slow += 1
            elif problem.startswith("peak"):
                result.too_much_memory += 1
            else:
                result.wrong_error += 1
            result.problems.append(f"{case.name} [chunks of {chunk}]: {problem}")
        if progress is not None and (index + 1) % 100 == 0:
            progress(f"hostile: {index + 1}/{count} cases")
    result.duration_s = time.monotonic() - started
    return result
