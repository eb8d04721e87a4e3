"""What every contender driver provides: a name, whether it can run here, and a command line.

A driver only *builds* the command; the harness runs it (``benchmarks.measure``) against a fresh fake
server, in a fresh output directory, and checks the result itself (``benchmarks.integrity``). Drivers
therefore cannot influence how they are measured or judged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Contender", "RunContext"]


@dataclass(frozen=True)
class RunContext:
    """Everything one contender run needs. ``work_dir`` is private scratch space (zips, lists)."""

    base_url: str
    series_uids: Sequence[str]
    work_dir: Path
    out_dir: Path
    manifest_path: Path
    uid_list_path: Path
    cpu_count: int
    env: dict[str, str] = field(default_factory=dict)

    def image_url(self, uid: str, *, new_file_names: bool = False) -> str:
        """The getImage URL of one series (what curl and aria2 fetch)."""
        options = "NewFileNames=Yes&" if new_file_names else ""
        return f"{self.base_url}getImage?{options}SeriesInstanceUID={uid}"


class Contender(ABC):
    """One tool in one configuration, e.g. ``curl@4`` = curl with 4 parallel downloads.

    ``family`` groups configurations of one tool (``--contenders curl`` selects every curl variant);
    ``concurrency`` is None for the tool's own default.
    """

    family: str = ""

    def __init__(self, concurrency: int | None = None) -> None:
        self.concurrency = concurrency

    @property
    def name(self) -> str:
        """``family`` or ``family@N``."""
        return self.family if self.concurrency is None else f"{self.family}@{self.concurrency}"

    def unavailable_reason(self) -> str | None:
        """Why this contender cannot run on this machine (missing tool...), or None."""
        return None

    @abstractmethod
    def command(self, context: RunContext) -> list[str]:
        """The argv to measure; it must download every series into ``context.out_dir``."""

    def describe(self) -> str:
        """One line for the results document: what exactly was run."""
        return self.name

    def result_extras(self, context: RunContext) -> dict[str, object]:
        """Anything the tool reported about itself after the run (read from ``work_dir``)."""
        del context
        return {}
