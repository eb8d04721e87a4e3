"""Run ``tcia_utils.nbia.downloadSeries`` against the fake server (executed by the benchmark venv).

Usage: ``python tciautils_driver.py BASE_URL UID_LIST OUT_DIR RESULT_JSON MAX_PASSES [MAX_WORKERS]``

The one and only patch: ``tcia_utils.nbia.setApiUrl`` is replaced by a function returning the fake
server's v4 root. tcia-utils 3.3.5 builds every URL as ``setApiUrl(endpoint, api_url) + endpoint...``
(``_download_and_unzip_series`` looks the name up in the module globals at call time), and its real
``setApiUrl`` only picks between ``https://{nbia,nlst}.cancerimagingarchive.net/nbia-api/services/v4/``
(and ``v1/`` for ``getContentsByName``, which downloads never use). Nothing else changes: the download
still goes through ``downloadSeries`` with its defaults (``max_workers=10``, ``getImage?NewFileNames=Yes``,
``requests.get`` without stream or timeout, whole zip in memory, ``extractall`` into ``OUT/<uid>/``).

``downloadSeries`` does not retry: a series answered 429 is logged and left out. Its documented resume
skips series whose directory exists, so a user re-runs the same call; the driver does exactly that,
up to ``MAX_PASSES`` calls, while series are missing (``MAX_PASSES=1`` = a single call). The pass count
goes to ``RESULT_JSON``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    base_url, uid_list, out_dir, result_json, max_passes_text = argv[:5]
    max_workers = int(argv[5]) if len(argv) > 5 else None
    # The contender, imported inside the measured process (it exists only in the benchmark venv).
    nbia: Any = importlib.import_module("tcia_utils.nbia")

    def fake_server_api_url(endpoint: str, api_url: str = "nbia") -> str:
        del endpoint, api_url
        return base_url

    nbia.setApiUrl = fake_server_api_url
    with open(uid_list, encoding="utf-8") as handle:
        uids = [line.strip() for line in handle if line.strip()]
    passes = 0
    started = time.monotonic()
    missing = list(uids)
    pass_log: list[tuple[float, int]] = []
    while missing and passes < int(max_passes_text):
        passes += 1
        if max_workers is None:
            nbia.downloadSeries(uids, input_type="list", path=out_dir)
        else:
            nbia.downloadSeries(uids, input_type="list", path=out_dir, max_workers=max_workers)
        present = set(os.listdir(out_dir)) if os.path.isdir(out_dir) else set()
        missing = [uid for uid in uids if uid not in present]
        pass_log.append((round(time.monotonic() - started, 2), len(uids) - len(missing)))
    with open(result_json, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "passes": passes,
                "series_missing_after": len(missing),
                "seconds": time.monotonic() - started,
                "pass_end_s_and_series_present": pass_log,
            },
            handle,
        )
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
