"""A ready-to-submit Slurm array script for a job split into shards (``tcia-fetch sbatch``). Pure text.

Every array task runs ``tcia-fetch run JOB --out DEST --shard $SLURM_ARRAY_TASK_ID/N`` with the
job's total budget (the shards split it among themselves), so the array is no harsher on the
archive than one process. Values are shell-quoted; nothing here runs anything.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tcia_fetch.errors import InputError
from tcia_fetch.store.location import DestinationLocation

__all__ = ["ArrayScript", "render_sbatch"]

_TIME: Final = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")
_SAFE_DIRECTIVE: Final = re.compile(r"^[A-Za-z0-9_.,:=+@%/-]+$")


@dataclass(frozen=True, slots=True)
class ArrayScript:
    """What the array script asks of Slurm and of tcia-fetch."""

    job: Path
    #: A directory (made absolute: the tasks start elsewhere) or a bucket URL, passed on as is.
    out: DestinationLocation
    shards: int
    time: str = "24:00:00"
    cpus: int = 2
    mem: str = "4G"
    partition: str | None = None
    account: str | None = None
    max_parallel: int | None = None
    run_options: Sequence[str] = ()


def _directive(value: str, option: str) -> str:
    if not _SAFE_DIRECTIVE.match(value):
        raise InputError(f"{value!r} is not a plain Slurm value", source=option)
    return value


def render_sbatch(script: ArrayScript, *, executable: str = "tcia-fetch") -> str:
    """The sbatch script as text; InputError for values Slurm would misread."""
    if not 1 <= script.shards <= 10_000:
        raise InputError(f"--shards must be between 1 and 10000, got {script.shards}", source="--shards")
    if not _TIME.match(script.time):
        raise InputError(
            f"{script.time!r} is not a Slurm time such as 24:00:00 or 2-00:00:00", source="--time"
        )
    array = f"0-{script.shards - 1}"
    if script.max_parallel is not None:
        if script.max_parallel < 1:
            raise InputError("--max-parallel must be at least 1", source="--max-parallel")
        array += f"%{script.max_parallel}"
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=tcia-fetch",
        f"#SBATCH --array={array}",
        f"#SBATCH --time={script.time}",
        f"#SBATCH --cpus-per-task={script.cpus}",
        f"#SBATCH --mem={_directive(script.mem, '--mem')}",
        "#SBATCH --output=tcia-fetch-%A_%a.log",
    ]
    if script.partition:
        lines.append(f"#SBATCH --partition={_directive(script.partition, '--partition')}")
    if script.account:
        lines.append(f"#SBATCH --account={_directive(script.account, '--account')}")
    command = [
        executable,
        "run",
        str(script.job.resolve()),
        "--out",
        str(script.out.resolve()) if isinstance(script.out, Path) else script.out.url,
        *script.run_options,
    ]
    concurrency = _option_value(script.run_options, "--concurrency")
    if concurrency is not None and concurrency.isdigit() and int(concurrency) < script.shards:
        lines += [
            "",
            f"# NOTE: {script.shards} shards but --concurrency {concurrency}: every shard needs one download",
            f"# slot, so up to {script.shards} downloads run at once. Use fewer shards, or --max-parallel.",
        ]
    lines += [
        "",
        f"# {script.shards} shards of one job share one destination and one politeness budget:",
        "# --concurrency, --max-rate and --max-bandwidth are the job's totals, split over the shards.",
        "# Resubmitting the same array resumes; `tcia-fetch status DEST` shows every shard.",
        "set -euo pipefail",
        " ".join(shlex.quote(part) for part in command)
        + f' --log-interval 60 --shard "${{SLURM_ARRAY_TASK_ID}}/{script.shards}"',
        "",
    ]
    return "\n".join(lines)


def _option_value(options: Sequence[str], name: str) -> str | None:
    for index, option in enumerate(options[:-1]):
        if option == name:
            return options[index + 1]
    return None
