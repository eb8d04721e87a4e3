"""Measure SeriesExtractor throughput: ``python -m tests.series.throughput [MiB] [chunk KiB]``.

Builds a synthetic NBIA-shaped archive (512 KiB instances of half-entropy data, deflated about
2:1), then feeds it in fixed-size chunks into a temporary staging directory and reports MB/s of
DICOM written and verified, for both keep modes, with and without fsync. Not collected by pytest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from tcia_fetch.series.extract import SeriesExtractor
from tests.series.archives import build_series, compress_raw, feed_in_chunks

INSTANCE_BYTES = 512 << 10


def measure(total_mib: int = 200, chunk_kib: int = 256) -> list[str]:
    count = max(1, (total_mib << 20) // INSTANCE_BYTES)
    started = time.perf_counter()
    archive = build_series(count, sizes=[INSTANCE_BYTES] * count)
    built = time.perf_counter() - started
    blobs = [compress_raw(data) for data in list(archive.dicom.values())[:40]]
    started = time.perf_counter()
    inflated = sum(len(zlib.decompress(blob, -15)) for blob in blobs)
    inflate_s = time.perf_counter() - started
    lines = [
        f"zlib inflate alone on the same data: {inflated / 1e6 / inflate_s:.1f} MB/s (one core)",
        f"archive: {count} instances, {archive.expectation.total_bytes / 1e6:.1f} MB DICOM, "
        f"{len(archive.body) / 1e6:.1f} MB zip (built in {built:.1f} s), chunks of {chunk_kib} KiB",
    ]
    for keep in ("dicom", "zip"):
        for fsync in (False, True):
            with tempfile.TemporaryDirectory() as staging:
                extractor = SeriesExtractor(archive.expectation, Path(staging), keep=keep, fsync=fsync)
                started = time.perf_counter()
                feed_in_chunks(extractor, archive.body, chunk_kib << 10)
                verified = extractor.finish()
                elapsed = time.perf_counter() - started
                extractor.close()
            lines.append(
                f"keep={keep:5} fsync={fsync!s:5}: {verified.dicom_bytes / 1e6 / elapsed:7.1f} MB/s of DICOM "
                f"({len(archive.body) / 1e6 / elapsed:6.1f} MB/s of zip, {elapsed:.2f} s)"
            )
    unzip = shutil.which("unzip")
    if unzip is not None:
        with tempfile.TemporaryDirectory() as scratch:
            zip_path = Path(scratch) / "series.zip"
            zip_path.write_bytes(archive.body)
            started = time.perf_counter()
            subprocess.run([unzip, "-q", str(zip_path), "-d", str(Path(scratch) / "out")], check=True)
            elapsed = time.perf_counter() - started
        lines.append(
            f"baseline unzip -q of the same zip already on disk: "
            f"{archive.expectation.total_bytes / 1e6 / elapsed:7.1f} MB/s of DICOM (CRC only, no MD5)"
        )
    return lines


if __name__ == "__main__":
    arguments = [int(value) for value in sys.argv[1:3]]
    sys.stdout.write("\n".join(measure(*arguments)) + "\n")
