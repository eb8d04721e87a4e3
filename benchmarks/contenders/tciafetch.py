"""tcia-fetch itself, through its CLI, as a user runs it.

``python -m tcia_fetch run JOB.tcia --out OUT --base-url URL --quiet --report REPORT.json
[--concurrency N]`` with the project's interpreter. Every other setting is the default (MD5 checks
and fsync on), so the numbers are what a user gets. ``tcia-fetch`` = default concurrency,
``tcia-fetch@N`` = ``--concurrency N``.
"""

from __future__ import annotations

import json
import sys

from benchmarks.contenders.base import Contender, RunContext

__all__ = ["TciaFetchContender"]


class TciaFetchContender(Contender):
    """The project's CLI, default settings, optional ``--concurrency``."""

    family = "tcia-fetch"
    #: ``--report`` is on: the harness checks the output itself, but the controller's own account
    #: (where the limit settled, the cap it learned) is what the issue-9 scenarios are about. Writing
    #: one small JSON file at the end costs nothing measurable.
    write_report = True

    def command(self, context: RunContext) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "tcia_fetch",
            "run",
            str(context.manifest_path),
            "--out",
            str(context.out_dir),
            "--base-url",
            context.base_url,
            "--quiet",
        ]
        if self.write_report:
            argv += ["--report", str(context.work_dir / "tcia-fetch-report.json")]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        return argv

    def describe(self) -> str:
        extra = "" if self.concurrency is None else f" --concurrency {self.concurrency}"
        return f"python -m tcia_fetch run JOB.tcia --out OUT --base-url URL --quiet{extra}"

    def result_extras(self, context: RunContext) -> dict[str, object]:
        report = context.work_dir / "tcia-fetch-report.json"
        if not report.exists():
            return {}
        try:
            loaded = json.loads(report.read_text(encoding="utf-8"))
        except ValueError:
            return {"report": "unreadable"}
        if not isinstance(loaded, dict):
            return {}
        # Keep only small scalar counters: results files stay small.
        extras: dict[str, object] = {
            f"report_{key}": value
            for key, value in loaded.items()
            if isinstance(value, int | float | str | bool) and len(str(value)) < 80
        }
        engine = loaded.get("engine")
        limiter = engine.get("limiter") if isinstance(engine, dict) else None
        if isinstance(limiter, dict):
            for key in ("limit", "peak_in_flight", "learned_cap", "no_gain_limit", "decreases"):
                extras[f"limiter_{key}"] = limiter.get(key)
        return extras
