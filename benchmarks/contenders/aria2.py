"""``aria2c`` from an input file of URLs (``out=<uid>.zip`` each), then ``unzip`` in parallel.

``aria2c -i urls.txt -j N -x1``: N downloads at once, one connection each (NBIA has no Range, so
splitting cannot help). ``--max-tries=20 --retry-wait=1`` are the documented retry knobs; note aria2
retries 503 but treats 429 as a hard error, which is what a user gets. Then
``xargs -P <cores> unzip`` into one directory per series.
"""

from __future__ import annotations

import shlex
import shutil

from benchmarks.contenders.base import Contender, RunContext

__all__ = ["Aria2Contender"]

DEFAULT_PARALLEL_DOWNLOADS = 8


class Aria2Contender(Contender):
    """``aria2@N``: aria2c with ``-j N -x1`` (default 8), then one unzip per core."""

    family = "aria2"

    def unavailable_reason(self) -> str | None:
        missing = [tool for tool in ("aria2c", "unzip", "xargs", "bash") if shutil.which(tool) is None]
        return f"missing {', '.join(missing)} (python -m benchmarks setup)" if missing else None

    def command(self, context: RunContext) -> list[str]:
        downloads = self.concurrency or DEFAULT_PARALLEL_DOWNLOADS
        zips = context.work_dir / "zips"
        input_file = context.work_dir / "aria2-input.txt"
        input_file.write_text(
            "".join(f"{context.image_url(uid)}\n  out={uid}.zip\n" for uid in context.series_uids),
            encoding="utf-8",
        )
        script = f"""
set -uo pipefail
rc=0
mkdir -p {shlex.quote(str(zips))} {shlex.quote(str(context.out_dir))}
aria2c -q -i {shlex.quote(str(input_file))} -d {shlex.quote(str(zips))} -j {downloads} -x1 -s1 \\
    --file-allocation=none --allow-overwrite=true --auto-file-renaming=false \\
    --max-tries=20 --retry-wait=1 --summary-interval=0 || rc=$?
cd {shlex.quote(str(zips))}
ls | sed -n 's/\\.zip$//p' | xargs -r -P {context.cpu_count} -I{{}} \\
    unzip -q -o {{}}.zip -d {shlex.quote(str(context.out_dir))}/{{}} || rc=$?
exit $rc
"""
        return ["bash", "-c", script]

    def describe(self) -> str:
        downloads = self.concurrency or DEFAULT_PARALLEL_DOWNLOADS
        return (
            f"aria2c -i urls -j {downloads} -x1 --max-tries=20 --retry-wait=1; then xargs -P <cores> unzip -q"
        )
