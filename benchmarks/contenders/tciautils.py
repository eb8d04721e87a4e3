"""TCIA's own Python helper, ``tcia-utils`` (``nbia.downloadSeries``), run in the benchmark venv.

See ``tciautils_driver.py`` for the single patch (the API root) and the re-run loop. ``tcia-utils``
is the default configuration (10 workers); ``tcia-utils@N`` passes ``max_workers=N``.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.contenders.base import Contender, RunContext
from benchmarks.setup_env import bench_python

__all__ = ["TciaUtilsContender"]

DRIVER = Path(__file__).resolve().parent / "tciautils_driver.py"
MAX_PASSES = 50


class TciaUtilsContender(Contender):
    """``nbia.downloadSeries(uids, input_type="list", path=OUT)``, re-called while series are missing."""

    family = "tcia-utils"

    def unavailable_reason(self) -> str | None:
        python = bench_python()
        if not python.exists():
            return f"{python} missing (run: python -m benchmarks setup)"
        return None

    def command(self, context: RunContext) -> list[str]:
        argv = [
            str(bench_python()),
            str(DRIVER),
            context.base_url,
            str(context.uid_list_path),
            str(context.out_dir),
            str(context.work_dir / "tcia-utils-result.json"),
            str(MAX_PASSES),
        ]
        if self.concurrency is not None:
            argv.append(str(self.concurrency))
        return argv

    def describe(self) -> str:
        workers = "default 10" if self.concurrency is None else str(self.concurrency)
        return f"tcia_utils.nbia.downloadSeries(uids, input_type='list', path=OUT) max_workers={workers}"

    def result_extras(self, context: RunContext) -> dict[str, object]:
        result = context.work_dir / "tcia-utils-result.json"
        if not result.exists():
            return {}
        loaded = json.loads(result.read_text(encoding="utf-8"))
        return {
            "passes": loaded.get("passes"),
            "series_missing_after": loaded.get("series_missing_after"),
            "pass_end_s_and_series_present": loaded.get("pass_end_s_and_series_present", [])[:10],
        }
