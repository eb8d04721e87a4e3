"""Peak memory and time of parsing a large ``getSeries`` answer: whole body vs streamed rows.

``python -m benchmarks.query_parse [--rows 400000] [--keep FILE]`` writes a synthetic v4 getSeries
answer (real column names and value shapes from the fake catalog; about 750 bytes a row, so 400,000
rows is about 300 MB, the size of a whole-collection answer) and parses it three ways, each in a
fresh child process whose peak RSS (``ru_maxrss`` from ``wait4``) and wall time are reported:

* ``whole``: the body held whole, ``json.loads``, then the row models (what ``NBIAClient.series``
  did before issue 14: ``await response.read()`` then ``parse_json_rows``);
* ``stream-list``: 64 KiB chunks through the streamed parser, the models collected in a list (what
  ``NBIAClient.series`` does now);
* ``stream-iter``: the same, each model dropped once made (what ``NBIAClient.iter_series`` gives a
  consumer that does not keep every row, such as a planner writing rows to its journal).

Not a test: the figures go in the README with this command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHUNK = 64 * 1024


def _write_body(path: Path, rows: int) -> int:
    from tcia_fetch.testing import Catalog

    templates = [entry.series_row() for entry in Catalog.generate(seed=5, collections=2).series]
    with path.open("wb") as handle:
        handle.write(b"[")
        for index in range(rows):
            row = dict(templates[index % len(templates)])
            row["SeriesInstanceUID"] = f"1.3.6.1.4.1.14519.5.2.1.7777.{index}.{index * 7919 % 10**12}"
            handle.write((b"," if index else b"") + json.dumps(row, separators=(",", ":")).encode())
        handle.write(b"]")
    return path.stat().st_size


def _child(mode: str, path: Path) -> int:
    from tcia_fetch.api.models import SeriesRow, rows_to_models
    from tcia_fetch.api.parse import parse_json_rows
    from tcia_fetch.api.rowstream import row_stream_for

    if mode == "whole":
        return len(rows_to_models(SeriesRow, parse_json_rows(path.read_bytes())))
    parser = row_stream_for("application/json", what="getSeries")
    kept: list[SeriesRow] = []
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            for row in parser.feed(chunk):
                model = SeriesRow.from_server(row)
                count += 1
                if mode == "stream-list":
                    kept.append(model)
    for row in parser.close():
        kept.append(SeriesRow.from_server(row))
        count += 1
    return count


def _measure(mode: str, path: Path) -> dict[str, object]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.query_parse", "--child", mode, str(path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} failed")
    return {
        "mode": mode,
        "rows": int(output),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "wall_s": round(time.monotonic() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.query_parse", description=__doc__)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the body here and keep it")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(_child(args.child[0], Path(args.child[1])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "getSeries.json"
        size = _write_body(path, args.rows)
        print(f"body: {args.rows} rows, {size / 2**20:.0f} MiB", flush=True)
        for mode in ("whole", "stream-list", "stream-iter"):
            print(json.dumps(_measure(mode, path)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
