"""Run the parts of the campaign in order and collect their figures.

:class:`CampaignSizes` says how big each part is (reduced by default, the release sizes with
``full()``); :func:`run_campaign` runs every part not skipped, in a work directory, and
returns :class:`~tcia_fetch.campaign.report.CampaignFigures`. An exception inside one part is
recorded as a failure of the campaign, and the other parts still run.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import anyio

from tcia_fetch._crashpoint import STARTUP_CRASH_POINTS
from tcia_fetch.campaign.crash import run_crash_campaign
from tcia_fetch.campaign.faults import SCENARIOS, matrix_catalog, mix_catalog, run_random_mix, run_scenario
from tcia_fetch.campaign.local import run_disk_full, run_read_only, run_shared_destination
from tcia_fetch.campaign.report import CampaignFigures

__all__ = ["PARTS", "CampaignSizes", "run_campaign"]

PARTS = ("faults", "crash", "local", "scaleout", "hostile", "server", "fuzz", "secrets", "s3")


@dataclass(frozen=True)
class CampaignSizes:
    """How much of each part to run."""

    matrix_seeds: int = 1
    mix_runs: int = 2
    kills: int = 20
    #: Passes over every named start-up crash point (one kill-and-restart round per point).
    startup_rounds: int = 1
    hostile: int = 200
    #: Hostile-server family: include the heavy cases (GiB-sized bombs, long storms).
    server_heavy: bool = False
    fuzz_examples: int = 5_000
    disk_full_sizes_kib: tuple[int, ...] = (700,)
    s3_kills: int = 3
    #: Scale-out part: shard processes on one destination, shard kills, Dask worker kills.
    shards: int = 3
    shard_kills: int = 1
    dask_kills: int = 1

    @classmethod
    def full(cls) -> CampaignSizes:
        """The release campaign: >= 200 kills, >= 500 hostile archives, >= 100,000 fuzz inputs."""
        return cls(
            matrix_seeds=3,
            mix_runs=6,
            kills=200,
            startup_rounds=3,
            hostile=1_000,
            server_heavy=True,
            fuzz_examples=100_000,
            disk_full_sizes_kib=(300, 700, 1_100),
            s3_kills=30,
            shards=4,
            shard_kills=5,
            dask_kills=3,
        )

    def with_overrides(
        self, *, kills: int | None, hostile: int | None, fuzz_examples: int | None
    ) -> CampaignSizes:
        """Command-line values beat the mode's defaults."""
        return replace(
            self,
            kills=self.kills if kills is None else kills,
            hostile=self.hostile if hostile is None else hostile,
            fuzz_examples=self.fuzz_examples if fuzz_examples is None else fuzz_examples,
        )


def run_campaign(
    sizes: CampaignSizes,
    *,
    mode: str,
    workdir: Path | None = None,
    skip: frozenset[str] = frozenset(),
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> CampaignFigures:
    """Run every part not in ``skip``; never raises for a failing part (it is in the figures)."""
    say = progress or (lambda _message: None)
    figures = CampaignFigures(mode=mode, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tcia-fetch-campaign-") as scratch:
        root = workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("faults", lambda: _faults(figures, sizes, root / "faults", seed, say)),
            ("crash", lambda: _crash(figures, sizes, root / "crash", seed, say)),
            ("local", lambda: _local(figures, sizes, root / "local", say)),
            ("scaleout", lambda: _scaleout(figures, sizes, root / "scaleout", seed, say)),
            ("hostile", lambda: _hostile(figures, sizes, root / "hostile", seed, say)),
            ("server", lambda: _server(figures, sizes, root / "server", say)),
            ("fuzz", lambda: _fuzz(figures, sizes, say)),
            ("secrets", lambda: _secrets(figures, root / "secrets", say)),
            ("s3", lambda: _s3(figures, sizes, root / "s3", seed, say)),
        ]
        for name, step in steps:
            if name in skip:
                continue
            say(f"{name}: starting")
            try:
                step()
            except Exception as exc:  # a broken part is a campaign failure, not a crash of the runner
                figures.errors.append(f"{name} part raised {type(exc).__name__}: {exc}")
                say(traceback.format_exc())
    figures.duration_s = time.monotonic() - started
    return figures


def _faults(
    figures: CampaignFigures, sizes: CampaignSizes, root: Path, seed: int, say: Callable[[str], None]
) -> None:
    async def matrix() -> None:
        for matrix_seed in range(sizes.matrix_seeds):
            catalog = matrix_catalog(11 + matrix_seed)
            for index, scenario in enumerate(SCENARIOS):
                outcome = await run_scenario(scenario, catalog, root / f"seed{matrix_seed}-{index:02d}")
                figures.scenarios.append(outcome)
                if not outcome.survived:
                    say(f"faults: '{scenario.name}' FAILED: {outcome.problems} {outcome.loss.counts()}")
            say(f"faults: matrix seed {matrix_seed}: {len(SCENARIOS)} scenarios")
        for run in range(sizes.mix_runs):
            figures.mixes.append(
                await run_random_mix(mix_catalog(13 + run), root / f"mix-{run}", seed=seed + run)
            )
        say(f"faults: {sizes.mix_runs} random-mix runs")

    anyio.run(matrix)


def _crash(
    figures: CampaignFigures, sizes: CampaignSizes, root: Path, seed: int, say: Callable[[str], None]
) -> None:
    if sizes.kills > 0:
        figures.crash = run_crash_campaign(
            root,
            kills=sizes.kills,
            seed=seed,
            progress=say,
            startup_points=STARTUP_CRASH_POINTS,
            startup_rounds=sizes.startup_rounds,
        )


def _local(figures: CampaignFigures, sizes: CampaignSizes, root: Path, say: Callable[[str], None]) -> None:
    for size in sizes.disk_full_sizes_kib:
        place = root / f"full-{size}"
        place.mkdir(parents=True, exist_ok=True)
        outcome = run_disk_full(place, size_kib=size)
        outcome.name += f" ({size} KiB)"
        figures.local.append(outcome)
    for runner, name in ((run_read_only, "readonly"), (run_shared_destination, "shared")):
        place = root / name
        place.mkdir(parents=True, exist_ok=True)
        figures.local.append(runner(place))
    say(
        "local: "
        + ", ".join(
            f"{o.name}: {'skipped' if o.skipped else 'pass' if o.passed else 'FAIL'}" for o in figures.local
        )
    )


def _scaleout(
    figures: CampaignFigures, sizes: CampaignSizes, root: Path, seed: int, say: Callable[[str], None]
) -> None:
    from tcia_fetch.campaign.s3shards import run_bucket_dask_worker_kill, run_bucket_shard_kills
    from tcia_fetch.campaign.scaleout import run_dask_worker_kill, run_shard_kills

    first = len(figures.local)
    if sizes.shards > 1:
        place = root / "shards"
        place.mkdir(parents=True, exist_ok=True)
        figures.local.append(run_shard_kills(place, shards=sizes.shards, kills=sizes.shard_kills, seed=seed))
        # The same on a bucket (needs moto: the test extra), where locks and uploads are objects.
        figures.local.append(
            run_bucket_shard_kills(
                root / "bucket-shards", shards=sizes.shards, kills=sizes.shard_kills, seed=seed
            )
        )
    for index in range(sizes.dask_kills):
        place = root / f"dask-{index}"
        place.mkdir(parents=True, exist_ok=True)
        figures.local.append(run_dask_worker_kill(place))
    if sizes.dask_kills > 0:  # the same onto a bucket, where a killed worker leaves an open upload
        figures.local.append(run_bucket_dask_worker_kill(root / "bucket-dask"))
    ran = figures.local[first:]
    say("scaleout: " + ", ".join(f"{o.name}: {'pass' if o.passed else 'FAIL'}" for o in ran))


def _hostile(
    figures: CampaignFigures, sizes: CampaignSizes, root: Path, seed: int, say: Callable[[str], None]
) -> None:
    if sizes.hostile > 0:
        from tcia_fetch.campaign.hostile import run_hostile

        figures.hostile = run_hostile(sizes.hostile, root, seed=seed, progress=say)


def _server(figures: CampaignFigures, sizes: CampaignSizes, root: Path, say: Callable[[str], None]) -> None:
    from tcia_fetch.campaign.hostile_server import run_hostile_server

    figures.server = run_hostile_server(root, include_heavy=sizes.server_heavy, progress=say)


def _fuzz(figures: CampaignFigures, sizes: CampaignSizes, say: Callable[[str], None]) -> None:
    if sizes.fuzz_examples > 0:
        from tcia_fetch.campaign.fuzz import run_fuzz

        figures.fuzz = run_fuzz(sizes.fuzz_examples, progress=say)


def _s3(
    figures: CampaignFigures, sizes: CampaignSizes, root: Path, seed: int, say: Callable[[str], None]
) -> None:
    """The s3:// destination under object-store faults and SIGKILLs (needs moto: the test extra)."""
    from tcia_fetch.campaign.s3 import run_s3_campaign

    figures.s3 = run_s3_campaign(root, kills=sizes.s3_kills, seed=seed, progress=say)


def _secrets(figures: CampaignFigures, root: Path, say: Callable[[str], None]) -> None:
    from tcia_fetch.campaign.canary import run_secret_sweep

    root.mkdir(parents=True, exist_ok=True)
    figures.secrets = run_secret_sweep(root)
    say(f"secrets: {len(figures.secrets.leaks)} leaks")
