"""Startup reconciliation closes every crash window; verify re-checks published series."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tcia_fetch.store._fs import host_name
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.reconcile import check_published, recheck, reconcile, summarize
from tests.store.helpers import UID_A, UID_B, UID_C, dead_pid, publish_series, record, stage_series

PATH_A = f"COLL/PAT/1.2.3/{UID_A}"
PATH_B = f"COLL/PAT/1.2.3/{UID_B}"
FILES = {"1-001.dcm": b"A" * 100, "1-002.dcm": b"B" * 50}


def _journal(destination: Destination, run_id: str = "run-1") -> Journal:
    return Journal.open(destination.state_dir, run_id=run_id)


def test_staging_of_a_dead_run_is_removed_and_a_live_one_kept(destination: Destination) -> None:
    live = destination.new_staging(UID_A)
    dead = destination.staging_dir / f"{UID_B}~{host_name()}~{dead_pid()}~zz"
    dead.mkdir()
    (dead / "partial.dcm").write_bytes(b"half")
    result = reconcile(destination, _journal(destination))
    assert result.leftovers_removed == 1
    assert live.exists() and not dead.exists()


def test_verified_and_published_without_done_record_is_adopted(destination: Destination) -> None:
    _, entries = publish_series(destination, UID_A, PATH_A, FILES)
    with _journal(destination) as journal:
        journal.append(record(UID_A, "verified", path=PATH_A, files=entries, dicom_bytes=150))
    result = reconcile(destination, _journal(destination, "run-2"))
    assert result.adopted == (UID_A,)
    assert result.done == (UID_A,)
    adopted = _journal(destination, "run-3").latest()[UID_A]
    assert adopted.status == "done"
    assert adopted.run_id == "run-2"
    assert adopted.files == entries


def test_verified_but_never_published_is_pending_again(destination: Destination) -> None:
    staging, entries = stage_series(destination, UID_A, FILES)  # crash before the rename
    with _journal(destination) as journal:
        journal.append(record(UID_A, "verified", path=PATH_A, files=entries))
    result = reconcile(destination, _journal(destination, "run-2"), live_owner=lambda host, pid: False)
    assert result.pending_verified == (UID_A,)
    assert result.done == () and result.damaged == ()
    assert not staging.exists()
    assert _journal(destination, "run-3").latest()[UID_A].status == "verified"


def test_verified_with_a_mismatching_final_dir_is_damaged_not_adopted(destination: Destination) -> None:
    _, entries = publish_series(destination, UID_A, PATH_A, FILES)
    os.unlink(destination.final_path(PurePosixPath(PATH_A)) / "1-002.dcm")
    with _journal(destination) as journal:
        journal.append(record(UID_A, "verified", path=PATH_A, files=entries))
    result = reconcile(destination, _journal(destination, "run-2"))
    assert result.adopted == ()
    assert [damage.series_uid for damage in result.damaged] == [UID_A]
    assert "1-002.dcm is missing" in result.damaged[0].reason


def test_intact_done_series_is_trusted_without_a_look(destination: Destination) -> None:
    _, entries = publish_series(destination, UID_A, PATH_A, FILES)
    with _journal(destination) as journal:
        journal.append(record(UID_A, "done", path=PATH_A, files=entries))
    result = reconcile(destination, _journal(destination, "run-2"))
    # Startup reconciliation inspects only what a crash can have left (issue 13): a done series
    # is trusted, and stays done.
    assert (result.done, result.damaged, result.pending_verified) == ((), (), ())
    assert _journal(destination, "run-3").status_of(UID_A) == "done"


def test_done_but_damaged_series_are_left_to_verify_which_reports_them_with_reasons(
    destination: Destination,
) -> None:
    final_a, entries_a = publish_series(destination, UID_A, PATH_A, FILES)
    final_b, entries_b = publish_series(destination, UID_B, PATH_B, FILES)
    (final_a / "1-001.dcm").write_bytes(b"short")
    (final_a / "stray.txt").write_text("extra")
    (final_b / "1-002.dcm").unlink()
    with _journal(destination) as journal:
        journal.append(record(UID_A, "done", path=PATH_A, files=entries_a))
        journal.append(record(UID_B, "done", path=PATH_B, files=entries_b))
        journal.append(record(UID_C, "done", path="COLL/PAT/1.2.3/" + UID_C, files=entries_b))
    # Damage done after a clean publish is not a crash window: a rerun does not stat every
    # published series (600,000 directories on NFS); ``tcia-fetch verify`` finds it.
    assert reconcile(destination, _journal(destination, "run-2")).damaged == ()
    damaged = recheck(destination, _journal(destination, "verify"), check_md5=False)
    reasons = {damage.series_uid: damage.reason for damage in damaged}
    assert set(reasons) == {UID_A, UID_B, UID_C}
    assert "1-001.dcm has 5 bytes, recorded 100" in reasons[UID_A]
    assert "unexpected file(s): stray.txt" in reasons[UID_A]
    assert "1-002.dcm is missing" in reasons[UID_B]
    assert "is missing" in reasons[UID_C]


def test_failed_series_are_left_to_the_engine(destination: Destination) -> None:
    with _journal(destination) as journal:
        journal.append(record(UID_A, "failed", reason="boom"))
    result = reconcile(destination, _journal(destination, "run-2"))
    assert (result.done, result.damaged, result.pending_verified) == ((), (), ())


def test_recheck_finds_same_size_corruption_only_with_md5(destination: Destination) -> None:
    final, entries = publish_series(destination, UID_A, PATH_A, FILES)
    with _journal(destination) as journal:
        journal.append(record(UID_A, "done", path=PATH_A, files=entries))
    (final / "1-001.dcm").write_bytes(b"Z" * 100)  # same size, different bytes
    journal = _journal(destination, "verify")
    assert recheck(destination, journal, check_md5=False) == []
    damaged = recheck(destination, journal, check_md5=True)
    assert [d.series_uid for d in damaged] == [UID_A]
    assert "1-001.dcm has MD5" in damaged[0].reason


def test_summarize_counts_against_a_plan(destination: Destination) -> None:
    with _journal(destination) as journal:
        journal.append(record(UID_A, "done", path=PATH_A, dicom_bytes=150))
        journal.append(record(UID_B, "failed", reason="x"))
        journal.append(record("9.9.9", "done", path="elsewhere", dicom_bytes=7))
    journal = _journal(destination, "status")
    status = summarize(journal, [UID_A, UID_B, UID_C])
    assert (status.done, status.failed, status.pending, status.done_bytes, status.not_planned_done) == (
        1,
        1,
        1,
        150,
        1,
    )
    unplanned = summarize(journal)
    assert (unplanned.done, unplanned.failed, unplanned.pending, unplanned.done_bytes) == (2, 1, 0, 157)


def test_rerun_after_a_complete_run_changes_nothing(destination: Destination, tmp_path: Path) -> None:
    _, entries = publish_series(destination, UID_A, PATH_A, FILES)
    with _journal(destination) as journal:
        journal.append(record(UID_A, "done", path=PATH_A, files=entries))
    before = sorted(
        str(p.relative_to(destination.root))
        for p in destination.root.rglob("*")
        if ".tcia-fetch" not in p.parts
    )
    first = reconcile(destination, _journal(destination, "run-2"))
    second = reconcile(destination, _journal(destination, "run-3"))
    after = sorted(
        str(p.relative_to(destination.root))
        for p in destination.root.rglob("*")
        if ".tcia-fetch" not in p.parts
    )
    assert first.done == second.done == ()  # nothing to inspect: trusted, not re-checked
    assert first.damaged == second.damaged == ()
    assert before == after


def test_crash_in_the_middle_of_a_repair_swap_is_damage_and_the_trash_is_cleaned(
    destination: Destination,
) -> None:
    final, entries = publish_series(destination, UID_A, PATH_A, FILES)
    with _journal(destination) as journal:
        journal.append(record(UID_A, "done", path=PATH_A, files=entries))
    # replace() had moved the old tree into the trash when the process died
    trash_entry = destination.trash_dir / f"{UID_A}~{host_name()}~{dead_pid()}~deadbeef"
    final.rename(trash_entry)
    result = reconcile(destination, _journal(destination, "run-2"))
    assert [damage.series_uid for damage in result.damaged] == [UID_A]
    assert "missing" in result.damaged[0].reason
    assert not trash_entry.exists()
    staging, _ = stage_series(destination, UID_A, FILES)
    assert destination.replace(staging, PurePosixPath(PATH_A)) == final
    assert reconcile(destination, _journal(destination, "run-3")).damaged == ()
    assert check_published(destination, _journal(destination, "run-4").latest()[UID_A]) == ()
