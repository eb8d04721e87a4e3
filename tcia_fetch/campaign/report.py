"""The campaign's figures (reliability.md §5): one JSON document and a short text summary.

``CampaignFigures`` gathers each part's results; :meth:`CampaignFigures.data_lost` is the
table every release must show at 0, :attr:`CampaignFigures.passed` is what the exit code
reflects. Pure data and formatting: no I/O here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tcia_fetch.campaign.canary import SecretsResult
from tcia_fetch.campaign.crash import PHASES, CrashResult
from tcia_fetch.campaign.faults import MixOutcome, ScenarioOutcome
from tcia_fetch.campaign.fuzz import FuzzResult
from tcia_fetch.campaign.hostile import HostileResult
from tcia_fetch.campaign.hostile_server import HostileServerResult
from tcia_fetch.campaign.local import LocalOutcome
from tcia_fetch.campaign.oracle import DataLoss
from tcia_fetch.campaign.s3 import S3Result

__all__ = ["CampaignFigures"]


@dataclass
class CampaignFigures:
    """Everything one campaign measured; parts that were not run stay empty/None."""

    mode: str
    started_at: str
    duration_s: float = 0.0
    scenarios: list[ScenarioOutcome] = field(default_factory=list)
    mixes: list[MixOutcome] = field(default_factory=list)
    crash: CrashResult | None = None
    local: list[LocalOutcome] = field(default_factory=list)
    hostile: HostileResult | None = None
    server: HostileServerResult | None = None
    fuzz: FuzzResult | None = None
    secrets: SecretsResult | None = None
    s3: S3Result | None = None
    errors: list[str] = field(default_factory=list)

    def loss(self) -> DataLoss:
        """Data lost over every part (fault matrix, random mixes, crash campaign, local faults)."""
        total = DataLoss()
        for outcome in self.scenarios:
            total.add(outcome.loss)
        for mix in self.mixes:
            total.add(mix.loss)
        if self.crash is not None:
            total.add(self.crash.loss)
        for local in self.local:
            total.add(local.loss)
        return total

    def data_lost(self) -> dict[str, int]:
        """Every data-lost figure; each must be 0."""
        figures = self.loss().counts()
        figures["hostile_accepted"] = self.hostile.accepted if self.hostile else 0
        figures["hostile_escapes"] = self.hostile.escapes if self.hostile else 0
        figures["invalid_uids_accepted"] = (
            sum(t.invalid_uids_accepted for t in self.fuzz.targets.values()) if self.fuzz else 0
        )
        figures["secret_leaks"] = len(self.secrets.leaks) if self.secrets else 0
        if self.s3 is not None:
            figures.update(self.s3.data_lost())
        return figures

    def failures(self) -> list[str]:
        """Every reason the campaign fails (empty = passed)."""
        reasons = [f"data lost: {name} = {count}" for name, count in self.data_lost().items() if count]
        reasons += [
            f"fault '{o.scenario.name}': {'; '.join(o.problems)}" for o in self.scenarios if o.problems
        ]
        reasons += [f"random fault mix: {'; '.join(m.problems)}" for m in self.mixes if m.problems]
        if self.crash is not None:
            reasons += [f"crash campaign: {problem}" for problem in self.crash.problems]
        reasons += [f"{o.name}: {'; '.join(o.problems)}" for o in self.local if o.problems]
        if self.hostile is not None:
            reasons += self.hostile.problems[:10]
        if self.server is not None:
            reasons += [f"hostile server: {problem}" for problem in self.server.problems[:20]]
        if self.fuzz is not None:
            for name, target in self.fuzz.targets.items():
                reasons += [f"fuzz {name}: {violation}" for violation in target.violations[:5]]
        if self.secrets is not None:
            reasons += [f"secrets: {problem}" for problem in self.secrets.problems]
        if self.s3 is not None:
            reasons += [f"s3: {problem}" for problem in self.s3.problems]
        return reasons + self.errors

    @property
    def passed(self) -> bool:
        return not self.failures()

    def fault_classes(self) -> dict[str, dict[str, int]]:
        """Per fault class: scenarios run and survived, faults injected (matrix and random mixes)."""
        table: dict[str, Counter[str]] = {}
        for outcome in self.scenarios:
            row = table.setdefault(outcome.scenario.fault_class, Counter())
            row["scenarios"] += 1
            row["survived"] += int(outcome.survived)
            row["faults_injected"] += outcome.faults_injected
            row["faults_survived"] += outcome.faults_injected if outcome.survived else 0
        return {name: dict(row) for name, row in sorted(table.items())}

    def as_dict(self) -> dict[str, Any]:
        """The JSON document (``--json FILE``)."""
        mix_fired: Counter[str] = Counter()
        for mix in self.mixes:
            mix_fired.update(mix.faults_fired)
        return {
            "mode": self.mode,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 1),
            "passed": self.passed,
            "data_lost": self.data_lost(),
            "faults": {
                "by_class": self.fault_classes(),
                "scenarios": [
                    {
                        "name": o.scenario.name,
                        "class": o.scenario.fault_class,
                        "expect": o.scenario.expect,
                        "survived": o.survived,
                        "faults_injected": o.faults_injected,
                        "duration_s": round(o.duration_s, 2),
                        "problems": o.problems,
                    }
                    for o in self.scenarios
                ],
                "random_mix": {
                    "runs": len(self.mixes),
                    "series": sum(m.series for m in self.mixes),
                    "done": sum(m.done for m in self.mixes),
                    "reported": sum(m.reported for m in self.mixes),
                    "faults_injected": dict(sorted(mix_fired.items())),
                },
            },
            "crash": self.crash.as_dict() if self.crash else None,
            "local": [
                {
                    "name": o.name,
                    "passed": o.passed,
                    "skipped": o.skipped,
                    "exit_codes": o.exit_codes,
                    "problems": o.problems,
                    "messages": o.messages[:2],
                }
                for o in self.local
            ],
            "hostile": self.hostile.as_dict() if self.hostile else None,
            "server": self.server.as_dict() if self.server else None,
            "fuzz": self.fuzz.as_dict() if self.fuzz else None,
            "secrets": self.secrets.as_dict() if self.secrets else None,
            "s3": self.s3.as_dict() if self.s3 else None,
            "failures": self.failures(),
        }

    def summary_lines(self) -> list[str]:
        """The human summary: one line per part, then the data-lost line and the verdict."""
        lines = [
            f"tcia-fetch reliability campaign ({self.mode}), "
            f"started {self.started_at}, {self.duration_s:.0f} s"
        ]
        if self.scenarios:
            survived = sum(o.survived for o in self.scenarios)
            injected = sum(o.faults_injected for o in self.scenarios)
            classes = ", ".join(
                f"{name} {row.get('faults_survived', 0)}/{row.get('faults_injected', 0)}"
                for name, row in self.fault_classes().items()
            )
            lines.append(
                f"faults    {survived}/{len(self.scenarios)} scenarios survived; {injected} faults injected "
                f"(survived/injected per class: {classes})"
            )
        if self.mixes:
            fired = sum(sum(m.faults_fired.values()) for m in self.mixes)
            series = sum(m.series for m in self.mixes)
            lines.append(
                f"random    {len(self.mixes)} runs, {series} series, {fired} random faults injected: "
                f"{sum(m.done for m in self.mixes)} verified, {sum(m.reported for m in self.mixes)} reported"
            )
        if self.crash is not None:
            phases = ", ".join(f"{name} {self.crash.phases.get(name, 0)}" for name in PHASES)
            lines.append(
                f"crash     {self.crash.kills} SIGKILLs, {self.crash.resumes} resumes, "
                f"{self.crash.rounds_completed} rounds of {self.crash.series_per_round} series completed "
                f"(kills landing while: {phases})"
            )
            if self.crash.startup_kills:
                startup = sorted(self.crash.startup_kills.items())
                points = ", ".join(f"{name} {count}" for name, count in startup)
                lines.append(
                    f"crash     {sum(self.crash.startup_kills.values())} SIGKILLs at named start-up points, "
                    f"each restarted at once (included above: {points})"
                )
        for outcome in self.local:
            state = (
                "skipped: " + outcome.skipped if outcome.skipped else ("pass" if outcome.passed else "FAIL")
            )
            lines.append(f"local     {outcome.name}: {state} (exit codes {outcome.exit_codes})")
        if self.hostile is not None:
            h = self.hostile
            lines.append(
                f"hostile   {h.tried} archives in {len(h.families)} families: {h.rejected} rejected, "
                f"{h.accepted} accepted, {h.escapes} escapes, {h.too_slow} too slow, "
                f"{h.too_much_memory} over memory; slowest {h.slowest_case_s:.2f} s"
            )
        if self.server is not None:
            sv = self.server
            worst = max((o.peak_rss_mb or 0.0 for o in sv.outcomes), default=0.0)
            lines.append(
                f"server    {len(sv.outcomes)} hostile-server cases: "
                f"{len(sv.outcomes) - sv.failed} protected, {sv.failed} failed; worst peak RSS {worst:.0f} MB"
            )
        if self.fuzz is not None:
            f = self.fuzz
            crashes = sum(t.crashes for t in f.targets.values())
            hangs = sum(t.hangs for t in f.targets.values())
            rejected = sum(t.rejected for t in f.targets.values())
            located = sum(t.located for t in f.targets.values())
            lines.append(
                f"fuzz      {f.examples} inputs over {len(f.targets)} parsers: "
                f"{crashes} crashes, {hangs} hangs, "
                f"{self.data_lost()['invalid_uids_accepted']} invalid UIDs accepted; {rejected} rejected "
                f"({located} naming a line/row/key)"
            )
        if self.secrets is not None:
            s = self.secrets
            lines.append(
                f"secrets   {s.canaries} canaries searched in {s.places_searched} places "
                f"({s.bytes_searched} bytes): {len(s.leaks)} leaks"
            )
        if self.s3 is not None:
            b = self.s3
            lines.append(
                f"s3        {b.kills} SIGKILLs into a bucket in {b.rounds + 1} rounds "
                f"({b.mid_upload_kills} aimed mid-upload, "
                f"{b.uploads_cut_by_kills} uploads cut open), {b.faults_injected} store faults, "
                f"{b.series} series; reruns started with {b.committed_at_rerun} committed series, "
                f"{b.refetched} fetched again"
            )
        lost = self.data_lost()
        lines.append(
            "data lost "
            + ", ".join(f"{name} {count}" for name, count in lost.items())
            + f" -> total {sum(lost.values())}"
        )
        failures = self.failures()
        lines.append("PASSED" if not failures else f"FAILED ({len(failures)} problem(s)):")
        lines += [f"  - {reason}" for reason in failures[:30]]
        return lines
