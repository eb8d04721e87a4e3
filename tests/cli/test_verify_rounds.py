"""``verify`` records damage in compacted rounds: bounded memory, and no uncompacted state left.

Issue 13: recording 600,000 damaged series at once held every record in the writer's view
(282 MB) and left 1.4 KB per series of segments in the state directory. Here the round size is
made tiny so a dozen series cross several rounds, in process (cheap).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tcia_fetch.cli import inspect
from tcia_fetch.cli.main import cli
from tcia_fetch.store.journal import SEGMENT_DIR, Journal
from tcia_fetch.store.records import FileEntry
from tests.store.helpers import record


def _destination(root: Path, count: int, *, on_disk: int) -> list[str]:
    """``count`` done series in the journal; the files of the first ``on_disk`` really exist."""
    uids = [f"1.2.826.0.9.{index}" for index in range(count)]
    with Journal.open(root / ".tcia-fetch", run_id="fetch") as journal:
        for index, uid in enumerate(uids):
            path = f"C/P/S/{uid}"
            journal.append(
                record(
                    uid, path=path, files=(FileEntry("1-1.dcm", 3, "0" * 32),), metadata={"Modality": "CT"}
                )
            )
            if index < on_disk:
                (root / path).mkdir(parents=True)
                (root / path / "1-1.dcm").write_bytes(b"abc")
        journal.compact()
    return uids


def test_damage_is_recorded_round_by_round_and_folded_into_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = _destination(tmp_path, 13, on_disk=3)
    rounds: list[int] = []
    original = inspect._record_damage_round

    def counted(*args: object) -> int:
        recorded = original(*args)  # type: ignore[arg-type]
        rounds.append(recorded)
        return recorded

    monkeypatch.setattr(inspect, "_DAMAGE_ROUND", 4)
    monkeypatch.setattr(inspect, "_record_damage_round", counted)
    result = CliRunner().invoke(
        cli, ["verify", str(tmp_path), "--no-md5", "--format", "json"], catch_exceptions=False
    )
    assert result.exit_code == 1, result.output
    document = json.loads(result.output)
    assert (document["checked"], document["damaged_count"]) == (13, 10)
    assert rounds == [4, 4, 2]  # a last, short round ends it
    state = tmp_path / ".tcia-fetch"
    assert not list((state / SEGMENT_DIR).glob("*.jsonl")), "verify left uncompacted segments"
    view = Journal.open(state, run_id="check")
    assert view.statistics.segment_records == 0 and view.statistics.snapshot_records == 13
    counts = view.counts()
    assert (counts.done, counts.damaged) == (3, 10)
    assert all(view.is_damaged(uid) for uid in uids[3:])
    damaged = {item.series_uid: item for item in view.iter_latest("failed")}
    assert damaged[uids[5]].metadata == {"Modality": "CT"}  # the record is kept whole for the re-fetch
    assert "is missing" in (damaged[uids[5]].reason or "")
