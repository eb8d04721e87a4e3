"""Peak memory does not grow with the size of a series, nor with the number of streams.

The CLI's peak RSS is measured for a ~2 MB series and for a series 75 times larger (150 MB); the
difference must stay within a small allowance for buffers, far below the larger series' size.
The peak is ``VmHWM`` from ``/proc/<pid>/status``, polled while the CLI runs: ``ru_maxrss`` is
useless here because Linux carries the parent's RSS at fork into the child's figure at exec (the
pytest worker's own few hundred MB).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tcia_fetch.campaign.process import peak_rss_kb
from tcia_fetch.testing import Catalog

from .fixtures import cli, fake_server_process

pytestmark = pytest.mark.e2e

LARGE_INSTANCES = int(os.environ.get("TCIA_FETCH_MEMORY_TEST_INSTANCES", "30"))


#: Series of the concurrency-64 case (each streamed by its own connection at the same time).
C64_SERIES_PER_STUDY = int(os.environ.get("TCIA_FETCH_MEMORY_TEST_C64_SERIES", "4"))


def peak_rss_mb(
    tmp_path: Path, instances: int, instance_bytes: int, *, series: int = 1, concurrency: int | None = None
) -> float:
    patients = max(1, series // C64_SERIES_PER_STUDY) if series > 1 else 1
    per_study = series // patients
    sizing = [
        "--seed",
        "3",
        "--collections",
        "1",
        "--patients-per-collection",
        str(patients),
        "--series-per-study",
        str(per_study),
        "--instances-per-series",
        f"{instances},{instances}",
        "--instance-bytes",
        f"{instance_bytes},{instance_bytes}",
    ]
    catalog = Catalog.generate(
        seed=3,
        collections=1,
        patients_per_collection=patients,
        series_per_study=per_study,
        instances_per_series=(instances, instances),
        instance_bytes=(instance_bytes, instance_bytes),
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    job = tmp_path / f"job-{instances}.tcia"
    job.write_text("ListOfSeriesToDownload=\n" + "\n".join(entry.uid for entry in catalog.series) + "\n")
    extra = [] if concurrency is None else ["--concurrency", str(concurrency)]
    with fake_server_process(tmp_path, sizing) as base_url:
        proc = cli(
            "run",
            str(job),
            "--out",
            str(tmp_path / f"out-{instances}"),
            "--base-url",
            base_url,
            "--quiet",
            *extra,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert isinstance(proc.args, list)
        argv = [str(part) for part in proc.args]
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, peak_rss_kb(proc.pid, argv))
            time.sleep(0.02)
    assert proc.returncode == 0
    assert peak_kb > 0, "the CLI ended before its memory could be read"
    return peak_kb / 1024


@pytest.mark.timeout(600)  # a hang guard sized for the work: 63 s seen on a loaded 2-core machine
def test_peak_memory_is_flat_in_series_size(tmp_path: Path) -> None:
    small = peak_rss_mb(tmp_path / "small", 2, 1_000_000)
    large = peak_rss_mb(tmp_path / "large", LARGE_INSTANCES, 5_000_000)
    large_series_mb = LARGE_INSTANCES * 5
    assert large - small < 40, (
        f"peak RSS grew from {small:.0f} MB to {large:.0f} MB for a {large_series_mb} MB series"
    )
    assert large < 150, (
        f"peak RSS {large:.0f} MB for a {large_series_mb} MB series (small series: {small:.0f} MB)"
    )


def test_peak_memory_stays_under_100_mb_with_64_streams(tmp_path: Path) -> None:
    # 64 series streamed at once (every one its own connection): buffers come from one shared
    # budget, so they do not multiply with the concurrency.
    series = 16 * C64_SERIES_PER_STUDY
    peak = peak_rss_mb(tmp_path / "c64", 6, 600_000, series=series, concurrency=64)
    assert peak < 100, f"peak RSS {peak:.0f} MB with {series} series at --concurrency 64"
