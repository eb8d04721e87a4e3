"""Peak RSS of ``tcia-fetch run`` against the issue-14 md5-list bomb, for this code or an older one.

The fake server (this tree's) serves a 4-series job; one series' md5hashes.csv inflates to
``--bomb-mib`` of blank lines, and with ``--claim`` its metadata also claims 6,000,000 images
(6 GB), as in issue 14. The CLI runs from ``--code`` (default: this tree), so an older release
can be measured against the same server: ``git archive <rev> tcia_fetch | tar -x -C /tmp/old``
then ``--code /tmp/old``. Prints one JSON line: exit code, peak RSS (VmHWM, MiB), wall time,
series done, and the failures' references and reasons.

    python -m benchmarks.hostile_archive --bomb-mib 1024 --claim
    python -m benchmarks.hostile_archive --bomb-mib 1024 --claim --code /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule, serve_in_background

_ROOT = Path(__file__).resolve().parents[1]


def _peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(code: Path, bomb_mib: int, claim: bool) -> dict[str, object]:
    """Run the job once; what it did and its peak RSS."""
    catalog = Catalog.generate(
        seed=14,
        collections=1,
        patients_per_collection=2,
        series_per_study=2,
        instances_per_series=(3, 5),
        instance_bytes=(3_000, 12_000),
    )
    target = catalog.series[0].uid
    rules = [FaultRule(FaultKind.MD5_LIST_BOMB, series_uid=target, times=None, inflated_bytes=bomb_mib << 20)]
    if claim:
        rules.append(
            FaultRule(
                FaultKind.CLAIM_FIGURES,
                series_uid=target,
                times=None,
                image_count=6_000_000,
                total_bytes=6_000_000 * 1000,
            )
        )
    fake = FakeNBIA(catalog, faults=FaultPlan(rules=rules))
    with tempfile.TemporaryDirectory() as work, serve_in_background(fake) as server:
        job = Path(work) / "job.toml"
        uids = ", ".join(f'"{entry.uid}"' for entry in catalog.series)
        job.write_text(f"[download]\nconcurrency = 2\nintegrity_attempts = 2\n[series]\nuids = [{uids}]\n")
        out = Path(work) / "out"
        argv = [sys.executable, "-m", "tcia_fetch", "run", str(job), "--out", str(out)]
        argv += ["--base-url", server.base_url, "--quiet"]
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": str(code)},
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _peak_kib(proc.pid))
            time.sleep(0.02)
        wall = time.monotonic() - started
        report = json.loads((out / ".tcia-fetch" / "last-report.json").read_text())
    return {
        "code": str(code),
        "bomb_mib": bomb_mib,
        "claim_6M": claim,
        "exit": proc.returncode,
        "peak_rss_mb": round(peak / 1024, 1),
        "wall_s": round(wall, 1),
        "done": report.get("done"),
        "failures": [(f["reference"], f["reason"][:160]) for f in report.get("failures", [])],
        "fatal_error": report.get("fatal_error"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bomb-mib", type=int, default=1024)
    parser.add_argument("--claim", action="store_true", help="also claim 6,000,000 images")
    parser.add_argument("--code", type=Path, default=_ROOT, help="root holding the tcia_fetch to run")
    args = parser.parse_args()
    print(json.dumps(measure(args.code, args.bomb_mib, args.claim)))


if __name__ == "__main__":
    main()
