"""``curl`` in parallel, then ``unzip`` in parallel: the best a shell user can assemble.

Phase 1: ``xargs -P N curl -sS --fail --retry 20 -o zips/<uid>.zip <getImage URL>``. ``--retry`` makes
curl retry 429/5xx and honour ``Retry-After`` (a careful shell user would add it; without it a capped
server leaves holes). Phase 2: ``xargs -P <cores> unzip -q -o zips/<uid>.zip -d out/<uid>``. No
verification beyond unzip's own CRC check. On loopback this is our stand-in for the hardware limit.
"""

from __future__ import annotations

import shlex
import shutil

from benchmarks.contenders.base import Contender, RunContext

__all__ = ["CurlContender"]

DEFAULT_PARALLEL_DOWNLOADS = 8


class CurlContender(Contender):
    """``curl@N``: N parallel downloads (default 8), then one unzip per core."""

    family = "curl"

    def unavailable_reason(self) -> str | None:
        missing = [tool for tool in ("curl", "unzip", "xargs", "bash") if shutil.which(tool) is None]
        return f"missing {', '.join(missing)}" if missing else None

    def command(self, context: RunContext) -> list[str]:
        downloads = self.concurrency or DEFAULT_PARALLEL_DOWNLOADS
        zips = context.work_dir / "zips"
        base = context.base_url
        script = f"""
set -uo pipefail
rc=0
mkdir -p {shlex.quote(str(zips))} {shlex.quote(str(context.out_dir))}
cd {shlex.quote(str(zips))}
xargs -P {downloads} -I{{}} curl -sS --fail --retry 20 -o {{}}.zip \\
    {shlex.quote(base)}'getImage?SeriesInstanceUID={{}}' < {shlex.quote(str(context.uid_list_path))} || rc=$?
ls | sed -n 's/\\.zip$//p' | xargs -r -P {context.cpu_count} -I{{}} \\
    unzip -q -o {{}}.zip -d {shlex.quote(str(context.out_dir))}/{{}} || rc=$?
exit $rc
"""
        return ["bash", "-c", script]

    def describe(self) -> str:
        downloads = self.concurrency or DEFAULT_PARALLEL_DOWNLOADS
        return f"xargs -P {downloads} curl -sS --fail --retry 20; then xargs -P <cores> unzip -q"
