"""The benchmark scenarios: a catalog, a server load model, and who competes.

Names are fixed (the README and the targets refer to them). Sizes are chosen so the full set fits in
about 25 minutes on the 2-core reference machine; see ``benchmarks/README.md`` for what each measures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.server import REPO_ROOT, ServerOptions

__all__ = ["PLANNING_MANIFEST", "SCENARIOS", "Scenario"]

PLANNING_MANIFEST = Path("/work/shared/manifests/NBIA-Submission-Test-Data_2524series-56gbytes.tcia")


def _planning_manifest() -> Path:
    """The real 2,524-series manifest: shared/ next to the checkout (CI's copy) or the work area."""
    beside = REPO_ROOT.parent / "shared" / "manifests" / PLANNING_MANIFEST.name
    return beside if beside.exists() else PLANNING_MANIFEST


@dataclass(frozen=True)
class Scenario:
    """One scenario. ``kind`` is ``download`` (every contender fetches every series) or ``planning``.

    ``limit_from_cap``: compute the server-imposed lower bound on wall time,
    zip bytes ÷ (download cap × per-connection rate), and report each contender's time ÷ limit.
    ``limit_from_link``: the same bound for a server whose total bandwidth is capped.
    ``min_free_disk_factor``: contenders that keep zips next to the extracted files (aria2, curl) are
    skipped when free space under the temporary directory is below this many times the DICOM bytes.
    """

    name: str
    description: str
    server: ServerOptions
    contenders: tuple[str, ...]
    default_runs: int = 3
    kind: str = "download"
    limit_from_cap: bool = False
    #: ``link``: the limit is zip bytes ÷ the server's total bandwidth (no per-connection cap).
    limit_from_link: bool = False
    #: Targets of issue 9 count the first-byte waits in the limit:
    #: ``limit + ceil(series ÷ concurrent downloads) × first_byte_delay_s``.
    limit_includes_first_byte: bool = False
    timeout_s: float = 600.0
    min_free_disk_factor: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)


_ALL = ("tcia-fetch", "tcia-utils", "aria2", "curl")

#: mem64's server, served over plain HTTP (mem64) and over TLS (mem64-tls).
_MEM64_SERVER = ServerOptions(
    seed=74,
    collections=2,
    patients_per_collection=12,
    series_per_study=4,
    instances_per_series=(9, 11),
    instance_bytes=(950_000, 1_050_000),
)

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            name="smoke",
            description="A handful of tiny series, one run: proves the harness works end to end (CI).",
            server=ServerOptions(
                seed=11,
                collections=1,
                patients_per_collection=2,
                series_per_study=3,
                instances_per_series=(1, 3),
                instance_bytes=(2_000, 8_000),
            ),
            contenders=_ALL,
            default_runs=1,
            timeout_s=60.0,
        ),
        Scenario(
            name="loopback",
            description=(
                "No throttling, ~1 GB of DICOM in 40 series over loopback: the engine's own overhead "
                "(CPU, memory, extraction, verification) against curl + parallel unzip. Every tool "
                "at its defaults, and at 8 at a time (issue 9's measurement)."
            ),
            server=ServerOptions(
                seed=21,
                collections=2,
                patients_per_collection=5,
                series_per_study=4,
                instances_per_series=(45, 55),
                instance_bytes=(450_000, 550_000),
            ),
            contenders=(*_ALL, "tcia-fetch@8", "tcia-utils@8", "curl@8"),
        ),
        Scenario(
            name="tcia-like",
            description=(
                "A busy archive: 2 MB/s per connection, 0.5 s to the first body byte, 150 ms per query, "
                "at most 4 concurrent downloads (more get 429 + Retry-After: 1). 12 series, ~450 MB."
            ),
            server=ServerOptions(
                seed=31,
                collections=1,
                patients_per_collection=3,
                series_per_study=4,
                instances_per_series=(34, 38),
                instance_bytes=(1_000_000, 1_050_000),
                rate_bytes_per_s=2_000_000,
                first_byte_delay_s=0.5,
                query_delay_s=0.15,
                max_concurrent_downloads=4,
                retry_after_s=1.0,
            ),
            contenders=("tcia-fetch", "tcia-fetch@8", "tcia-utils", "aria2@4", "curl@4"),
            limit_from_cap=True,
            timeout_s=240.0,
            notes=(
                "aria2 and curl are given -j/-P 4 = the server's cap (a user who knows the cap); "
                "tcia-fetch@8 asks for more than the cap and must adapt to the 429s; "
                "tcia-utils runs its defaults (10 workers) and is re-called while series are missing.",
            ),
        ),
        Scenario(
            name="huge",
            description=(
                "Two 2 GB series (128 instances of 16 MB each): memory must stay flat whatever the size."
            ),
            server=ServerOptions(
                seed=41,
                collections=1,
                patients_per_collection=1,
                series_per_study=2,
                instances_per_series=(128, 128),
                instance_bytes=(16_000_000, 16_000_000),
                pixel_cache_bytes=512 * 1024 * 1024,
            ),
            contenders=_ALL,
            default_runs=1,
            timeout_s=900.0,
            min_free_disk_factor=2.5,
        ),
        Scenario(
            name="tiny",
            description=(
                "2,000 series of 1-3 small instances: per-series overhead (requests, files, journal)."
            ),
            server=ServerOptions(
                seed=51,
                collections=4,
                patients_per_collection=25,
                series_per_study=20,
                instances_per_series=(1, 3),
                instance_bytes=(2_000, 20_000),
            ),
            contenders=_ALL,
            timeout_s=600.0,
        ),
        # --- issue 9: real concurrency, a learned cap, flat memory, cheap tiny series ------------
        Scenario(
            name="cap24",
            description=(
                "A server that allows 24 concurrent downloads (more get 429 + Retry-After: 1), 3 MB/s "
                "per connection, 0.4 s to the first body byte: 48 series of ~10 MB zips. tcia-fetch "
                "asks for 32 (above the cap) and must learn it; tcia-utils runs its defaults (10 threads)."
            ),
            server=ServerOptions(
                seed=71,
                collections=1,
                patients_per_collection=12,
                series_per_study=4,
                instances_per_series=(26, 30),
                instance_bytes=(950_000, 1_050_000),
                rate_bytes_per_s=3_000_000,
                first_byte_delay_s=0.4,
                max_concurrent_downloads=24,
                retry_after_s=1.0,
            ),
            contenders=("tcia-fetch@32", "tcia-fetch@64", "tcia-utils"),
            default_runs=2,
            limit_from_cap=True,
            limit_includes_first_byte=True,
            timeout_s=240.0,
        ),
        Scenario(
            name="tiny-latency",
            description=(
                "600 series of 1-3 small instances behind the cap24 server (24 concurrent downloads, "
                "0.4 s to the first byte, 429 + Retry-After: 1 above the cap): per-series latency."
            ),
            server=ServerOptions(
                seed=72,
                collections=3,
                patients_per_collection=20,
                series_per_study=10,
                instances_per_series=(1, 3),
                instance_bytes=(2_000, 20_000),
                rate_bytes_per_s=3_000_000,
                first_byte_delay_s=0.4,
                max_concurrent_downloads=24,
                retry_after_s=1.0,
            ),
            contenders=("tcia-fetch@32", "tcia-utils"),
            default_runs=2,
            limit_from_cap=True,
            limit_includes_first_byte=True,
            timeout_s=240.0,
        ),
        Scenario(
            name="bandwidth",
            description=(
                "A server whose whole uplink is 30 MB/s (at most 5 MB/s per connection, no download "
                "cap, 0.1 s to the first byte): past about 7 streams (6 to fill the link, plus the "
                "first-byte gaps) more connections add nothing. 160 series of ~2.5 MB zips; "
                "tcia-fetch asks for 32 and should settle well below it."
            ),
            server=ServerOptions(
                seed=73,
                collections=2,
                patients_per_collection=20,
                series_per_study=4,
                instances_per_series=(6, 8),
                instance_bytes=(950_000, 1_050_000),
                rate_bytes_per_s=5_000_000,
                total_rate_bytes_per_s=30_000_000,
                first_byte_delay_s=0.1,
            ),
            contenders=("tcia-fetch@32", "tcia-fetch@6", "tcia-utils"),
            default_runs=2,
            limit_from_link=True,
            timeout_s=240.0,
        ),
        Scenario(
            name="mem64",
            description=(
                "Concurrency 64 on loopback, no throttling: 96 series of ~10 MB of DICOM each. Peak "
                "RSS must stay under 100 MB however many streams are open."
            ),
            server=_MEM64_SERVER,
            contenders=("tcia-fetch@64",),
            default_runs=2,
            timeout_s=300.0,
        ),
        Scenario(
            name="mem64-tls",
            description=(
                "mem64 over HTTPS, as the real archive serves: a TLS connection costs the client a "
                "read buffer per connection (asyncio's 256 KiB) and the decryption. Peak RSS must "
                "stay under 100 MB with 64 streams here too."
            ),
            server=dataclasses.replace(_MEM64_SERVER, tls=True),
            contenders=("tcia-fetch@64",),
            default_runs=2,
            timeout_s=300.0,
        ),
        Scenario(
            name="tiny600",
            description=(
                "600 series of 1-3 small instances on loopback, 8 at a time: per-series CPU and "
                "bookkeeping with full verification and fsync."
            ),
            server=ServerOptions(
                seed=75,
                collections=3,
                patients_per_collection=20,
                series_per_study=10,
                instances_per_series=(1, 3),
                instance_bytes=(2_000, 20_000),
            ),
            contenders=("tcia-fetch@8", "tcia-utils@8", "curl@8"),
            default_runs=3,
            timeout_s=300.0,
        ),
        Scenario(
            name="planning",
            description=(
                "The real 2,524-series manifest seeded into the catalog, tiny instances, 150 ms per "
                "query: time until `tcia-fetch plan` completes, and time from `run` start to the first "
                "downloaded byte on disk (the run is then stopped)."
            ),
            server=ServerOptions(
                seed=61,
                collections=3,
                patients_per_collection=20,
                series_per_study=0,
                instances_per_series=(1, 2),
                instance_bytes=(2_000, 4_000),
                manifest=_planning_manifest(),
                query_delay_s=0.15,
            ),
            contenders=("tcia-fetch",),
            kind="planning",
            timeout_s=120.0,
        ),
    )
}
