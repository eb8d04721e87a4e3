"""Job inputs without one Python object per UID (issue 13): lists streamed, UIDs kept compact."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from tcia_fetch.errors import InputError
from tcia_fetch.job import text as text_module
from tcia_fetch.job.jobfile import UidOrigin, load_job
from tcia_fetch.job.manifest import read_manifest

HEADER = "downloadServerUrl=x\nmanifestVersion=3.0\nListOfSeriesToDownload=\n"
#: UIDs in the memory test: enough that a Python object per UID (~0.5 KB with its origin)
#: would cost 15 MB, few enough to parse in about a second under tracemalloc.
COUNT = 30_000


def _uid(index: int) -> str:
    return f"1.3.6.1.4.1.14519.5.2.1.7009.9004.1{index:07d}.{index * 7919 % 1000003 + 1}"


def _manifest(path: Path, count: int, *, extra: str = "") -> Path:
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER)
        out.writelines(f"{_uid(index)}\n" for index in range(count))
        out.write(extra)
    return path


def test_a_large_manifest_costs_bytes_per_uid_not_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_module, "_CHUNK_BYTES", 64 * 1024)
    path = _manifest(tmp_path / "big.tcia", COUNT)
    gc.collect()
    tracemalloc.start()
    try:
        job = load_job(path)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(job.explicit_uids) == COUNT
    # 8-byte key + 4-byte line per UID kept (measured 12); while reading, a chunk of text and
    # the de-duplication set (measured 4 MB; the whole file and its lines would be ~8 MB more).
    assert retained / COUNT < 40, f"{retained / COUNT:.0f} bytes kept per UID"
    assert peak < 8 * 1024 * 1024, (
        f"loading peaked at {peak / 1e6:.0f} MB (the file is {path.stat().st_size / 1e6:.0f} MB)"
    )
    # The UIDs come back from the file, in order, with where they were found.
    origins = iter(job.explicit_uids)
    assert next(origins) == UidOrigin(_uid(0), f"{path}:4")
    last = None
    for last in origins:  # noqa: B007 - the loop reads the whole list again
        pass
    assert last == UidOrigin(_uid(COUNT - 1), f"{path}:{COUNT + 3}")


def test_a_list_file_changed_after_it_was_checked_is_an_input_error(tmp_path: Path) -> None:
    path = _manifest(tmp_path / "list.tcia", 50)
    job = load_job(path)
    lines = path.read_text().splitlines()
    lines[30] = _uid(999)  # the 28th UID is swapped for another valid one
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as caught:
        list(job.explicit_uids)
    assert str(caught.value).startswith(f"{path}:31: the file changed")
    path.write_text(HEADER + _uid(0) + "\n")  # truncated: the rest is gone
    with pytest.raises(InputError, match="the file changed"):
        list(job.explicit_uids)


def test_validation_still_names_file_and_line_past_the_first_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors found deep in a streamed file carry the same line numbers as a whole-file read."""
    monkeypatch.setattr(text_module, "_CHUNK_BYTES", 4096)
    bad = _manifest(tmp_path / "bad.tcia", 2000, extra="1.2.03.4\n")
    with pytest.raises(InputError) as caught:
        load_job(bad)
    assert str(caught.value).startswith(f"{bad}:2004: '1.2.03.4' is not a DICOM UID")
    binary = _manifest(tmp_path / "nul.tcia", 2000, extra="1.2.3\x00\n")
    with pytest.raises(InputError, match=r"nul\.tcia:2004: NUL byte at byte offset"):
        load_job(binary)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        b"SeriesInstanceUID,Note\n"
        + b"".join(f"{_uid(i)},x\n".encode() for i in range(900))
        + b"1.2.3,caf\xe9\n"
    )
    with pytest.raises(InputError, match=r"latin\.csv:902: not UTF-8 text: byte 0xe9"):
        load_job(latin)
    # CRLF breaks cut at a chunk edge stay one break: the same UIDs on the same lines.
    crlf = tmp_path / "crlf.tcia"
    crlf.write_bytes((HEADER + "".join(f"{_uid(i)}\n" for i in range(2000))).replace("\n", "\r\n").encode())
    manifest = read_manifest(crlf)
    assert manifest.uid_lines == tuple(range(4, 2004))
    assert manifest.uids[-1] == _uid(1999)
