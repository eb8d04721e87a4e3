"""Memory per series is pinned: ``status`` and ``verify`` of a 10^5-series destination stay small.

Issue 13: before, the journal held every record (metadata and file list) as Python objects,
~12 KB per series, so ``status`` of a 60,000-series destination peaked at 664 MB. The
destination here is synthetic (journal records written directly, no download), so the test is
cheap: the CLI's peak RSS (``VmHWM``, polled) is measured for 1,000 and for 100,000 done series
and the growth per series must stay far below a Python object per series.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tcia_fetch.campaign.process import peak_rss_kb
from tcia_fetch.store.digests import LAST_PLAN_DIGESTS, SortedDigests
from tcia_fetch.store.journal import SEGMENT_DIR, Journal
from tcia_fetch.store.records import FileEntry, SeriesRecord

from .fixtures import cli

pytestmark = pytest.mark.e2e

LARGE = int(os.environ.get("TCIA_FETCH_SCALE_TEST_SERIES", "100000"))
SMALL = 1_000
#: Bytes of peak RSS allowed per extra series: the compact index costs 25 bytes and the plan's
#: digests 8 (about 70 measured, with transient copies and allocator slack); the design this
#: replaces cost ~12,000 (issue 13), a set of UID strings alone would cost ~200.
BUDGET_PER_SERIES = 150


def _uid(index: int) -> str:
    return f"1.3.6.1.4.1.14519.5.2.1.9999.{index:07d}.{index * 7919 % 1000003}"


def build_destination(root: Path, count: int) -> None:
    """A destination whose journal knows ``count`` done series (with metadata), and a plan of them."""
    state = root / ".tcia-fetch"
    (state / SEGMENT_DIR).mkdir(parents=True)
    with open(state / SEGMENT_DIR / "00000000000000000001-h-1-aa.jsonl", "w", encoding="utf-8") as out:
        for index in range(count):
            uid = _uid(index)
            metadata = {
                "SeriesInstanceUID": uid,
                "Collection": "Synth-Scale",
                "PatientID": f"SC-{index // 100:05d}",
                "StudyInstanceUID": f"1.2.3.{index // 100}",
                "Modality": "CT",
                "SeriesDescription": "one slice",
                "Manufacturer": "SYNTH",
                "StudyDate": "2001-02-03",
                "ImageCount": 1,
                "FileSize": 2048,
            }
            record = SeriesRecord(
                series_uid=uid,
                status="done",
                at=1.7e9,
                run_id="synthetic",
                path=f"Synth-Scale/SC-{index // 100:05d}/1.2.3.{index // 100}/{uid}",
                files=(FileEntry("1-1.dcm", 2048, "0" * 32),),
                instance_count=1,
                dicom_bytes=2048,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                metadata=metadata,
            )
            out.write(record.to_json() + "\n")
    journal = Journal.open(state, run_id="build")
    journal.compact()
    plan = SortedDigests.of_uids(_uid(index) for index in range(count))
    (state / LAST_PLAN_DIGESTS).write_bytes(plan.to_bytes())
    (state / "last-plan.json").write_text(json.dumps({"run_id": "synthetic", "series_count": count}))


def peak_rss_mb(output: Path, *args: str) -> tuple[float, bytes]:
    """Run the CLI with ``args``; its peak RSS in MB (polled VmHWM) and its stdout (via a file)."""
    with open(output, "wb") as sink:
        proc = cli(*args, stdout=sink, stderr=subprocess.STDOUT)
        assert isinstance(proc.args, list)
        argv = [str(part) for part in proc.args]
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, peak_rss_kb(proc.pid, argv))
            time.sleep(0.01)
    stdout = output.read_bytes()
    assert proc.returncode in (0, 1), stdout[-2000:]
    assert peak_kb > 0, "the CLI ended before its memory could be read"
    return peak_kb / 1024, stdout


def test_status_memory_per_series_is_bytes_not_kilobytes(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    build_destination(small, SMALL)
    build_destination(large, LARGE)
    small_mb, _ = peak_rss_mb(tmp_path / "small.out", "status", str(small), "--format", "json")
    large_mb, out = peak_rss_mb(tmp_path / "large.out", "status", str(large), "--format", "json")
    document = json.loads(out)
    assert (document["done"], document["failed"], document["pending"]) == (LARGE, 0, 0)
    assert document["done_bytes"] == LARGE * 2048
    per_series = (large_mb - small_mb) * 1024 * 1024 / (LARGE - SMALL)
    assert per_series < BUDGET_PER_SERIES, (
        f"status: {small_mb:.0f} MB for {SMALL} series, {large_mb:.0f} MB for {LARGE} "
        f"({per_series:.0f} bytes per series)"
    )


def test_verify_streams_the_journal(tmp_path: Path) -> None:
    """verify reads every record (one at a time) and finds every synthetic series missing on disk."""
    count = max(SMALL, LARGE // 10)
    dest = tmp_path / "dest"
    build_destination(dest, count)
    peak_mb, out = peak_rss_mb(tmp_path / "verify.out", "verify", str(dest), "--no-md5", "--format", "json")
    document = json.loads(out)
    assert document["checked"] == count
    assert len(document["damaged"]) == count
    # The damage list itself is held (it is the answer); records are not: ~1 KB each would
    # add count KB, the damage rows a few hundred bytes each.
    assert peak_mb < 150, f"verify peaked at {peak_mb:.0f} MB for {count} series"
