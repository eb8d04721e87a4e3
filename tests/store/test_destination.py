"""Destination: probe, private staging, atomic publish that never overwrites nor follows links."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path, PurePosixPath

import pytest

from tcia_fetch.errors import DestinationError, DiskFullError
from tcia_fetch.store._fs import host_name, rename_no_replace
from tcia_fetch.store.destination import Destination, FinalPathExistsError, parse_owner
from tests.store.helpers import UID_A, UID_B, dead_pid, publish_series, stage_series, zombie_pid

SERIES_PATH = PurePosixPath("COLL/PAT-1/1.2.3/" + UID_A)


def test_prepare_creates_private_state_dirs(tmp_path: Path) -> None:
    destination = Destination(tmp_path / "new" / "dest")
    destination.prepare()
    assert destination.staging_dir.is_dir()
    assert destination.trash_dir.is_dir()
    assert list(destination.state_dir.glob(".probe*")) == []
    assert destination.free_bytes() > 0


def test_prepare_refuses_a_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a directory")
    with pytest.raises(DestinationError, match="not a directory"):
        Destination(root).prepare()


def test_prepare_refuses_a_root_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="ENOTDIR"):
        Destination(tmp_path / "file" / "dest").prepare()


def test_prepare_refuses_a_symlinked_state_dir(tmp_path: Path) -> None:
    root = tmp_path / "dest"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / ".tcia-fetch").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DestinationError, match="symlink"):
        Destination(root).prepare()


def test_prepare_on_read_only_filesystem_fails_before_any_work(read_only_filesystem: Path) -> None:
    with pytest.raises(DestinationError, match="EROFS") as caught:
        Destination(read_only_filesystem / "dest").prepare()
    assert str(read_only_filesystem) in str(caught.value)


def test_prepare_on_full_filesystem_is_disk_full(tiny_filesystem: Path) -> None:
    destination = Destination(tiny_filesystem / "dest")
    destination.prepare()
    filler = tiny_filesystem / "filler"
    with pytest.raises(OSError), open(filler, "wb") as stream:
        while True:
            stream.write(b"\0" * 4096)
            stream.flush()
    with pytest.raises(DiskFullError, match="ENOSPC"):
        destination.prepare()


def test_new_staging_is_private_and_names_its_owner(destination: Destination) -> None:
    staging = destination.new_staging(UID_A)
    assert staging.parent == destination.staging_dir
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    assert parse_owner(staging.name) == (host_name(), os.getpid())
    assert staging.name.startswith(UID_A)
    assert destination.new_staging(UID_A) != staging


def test_publish_moves_the_whole_series_into_place_at_once(destination: Destination) -> None:
    staging, _entries = stage_series(destination, UID_A, {"1-001.dcm": b"a" * 10, "1-002.dcm": b"b" * 20})
    final = destination.final_path(SERIES_PATH)
    assert not final.exists()  # nothing under the final name before the rename
    published = destination.publish(staging, SERIES_PATH)
    assert published == final
    assert sorted(p.name for p in final.iterdir()) == ["1-001.dcm", "1-002.dcm"]
    assert (final / "1-002.dcm").read_bytes() == b"b" * 20
    assert not staging.exists()


def test_publish_refuses_an_existing_final_directory_even_empty(destination: Destination) -> None:
    final = destination.final_path(SERIES_PATH)
    final.mkdir(parents=True)
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"x"})
    with pytest.raises(FinalPathExistsError, match="already exists") as caught:
        destination.publish(staging, SERIES_PATH)
    assert not caught.value.fatal
    assert list(final.iterdir()) == []
    assert (staging / "1-001.dcm").exists()


def test_publish_never_overwrites_a_published_series(destination: Destination) -> None:
    publish_series(destination, UID_A, str(SERIES_PATH), {"1-001.dcm": b"first"})
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"second"})
    with pytest.raises(FinalPathExistsError):
        destination.publish(staging, SERIES_PATH)
    assert (destination.final_path(SERIES_PATH) / "1-001.dcm").read_bytes() == b"first"


def test_publish_refuses_a_planted_symlink_in_the_parent_chain(
    destination: Destination, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (destination.root / "COLL").mkdir()
    (destination.root / "COLL" / "PAT-1").symlink_to(victim)
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"x"})
    with pytest.raises(DestinationError, match="symbolic link") as caught:
        destination.publish(staging, SERIES_PATH)
    assert "PAT-1" in str(caught.value)
    assert list(victim.iterdir()) == []


def test_publish_refuses_a_symlink_at_the_final_path(destination: Destination, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    final = destination.final_path(SERIES_PATH)
    final.parent.mkdir(parents=True)
    final.symlink_to(victim)
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"x"})
    with pytest.raises(FinalPathExistsError):
        destination.publish(staging, SERIES_PATH)
    assert final.is_symlink()
    assert list(victim.iterdir()) == []


def test_publish_refuses_a_file_in_the_way(destination: Destination) -> None:
    (destination.root / "COLL").write_text("a file")
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"x"})
    with pytest.raises(DestinationError, match="not a directory"):
        destination.publish(staging, SERIES_PATH)


@pytest.mark.parametrize("relative", ["/abs/" + UID_A, "COLL/../../" + UID_A, ".tcia-fetch/x", "COLL/./x"])
def test_publish_refuses_paths_that_could_leave_the_root(destination: Destination, relative: str) -> None:
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"x"})
    path = PurePosixPath(relative)
    if relative == "COLL/./x":  # PurePosixPath already drops "."; prove it lands inside
        assert destination.publish(staging, path) == destination.root / "COLL" / "x"
        return
    with pytest.raises(DestinationError, match="series path"):
        destination.publish(staging, path)


def test_publish_refuses_a_directory_outside_staging(destination: Destination, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(DestinationError, match="not a staging directory"):
        destination.publish(outside, SERIES_PATH)


def test_replace_swaps_a_damaged_series_and_empties_the_trash(destination: Destination) -> None:
    final, _ = publish_series(destination, UID_A, str(SERIES_PATH), {"1-001.dcm": b"old", "junk": b"j"})
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"new"})
    assert destination.replace(staging, SERIES_PATH) == final
    assert sorted(p.name for p in final.iterdir()) == ["1-001.dcm"]
    assert (final / "1-001.dcm").read_bytes() == b"new"
    assert list(destination.trash_dir.iterdir()) == []


def test_replace_without_an_old_tree_publishes(destination: Destination) -> None:
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"new"})
    assert (destination.replace(staging, SERIES_PATH) / "1-001.dcm").read_bytes() == b"new"


def test_discard_removes_a_half_written_staging_dir(destination: Destination) -> None:
    staging, _ = stage_series(destination, UID_A, {"1-001.dcm": b"x"})
    (staging / "sub").mkdir()
    (staging / "sub" / "partial").write_bytes(b"y")
    destination.discard(staging)
    assert not staging.exists()
    destination.discard(staging)  # idempotent


def test_cleanup_removes_dead_owners_and_keeps_live_ones(destination: Destination) -> None:
    mine = destination.new_staging(UID_A)
    dead = destination.staging_dir / f"{UID_B}~{host_name()}~{dead_pid()}~abc123"
    dead.mkdir()
    (dead / "1-001.dcm").write_bytes(b"x")
    other_host_trash = destination.trash_dir / f"{UID_B}~node-elsewhere~4242~abc"
    other_host_trash.mkdir()
    removed = destination.cleanup_leftovers()
    assert removed == 1
    assert mine.exists()
    assert not dead.exists()
    assert other_host_trash.exists()  # another host: only age or the caller's judgement removes it


def test_a_zombie_writer_is_dead_and_its_temporaries_are_removed(destination: Destination) -> None:
    # A writer whose parent was SIGKILLed stays a zombie where PID 1 reaps no orphans (a run's
    # catalog child did, in a CI crash campaign); the rerun must still clear its temporaries.
    with zombie_pid() as pid:
        catalog_tmp = destination.root / f".catalog.parquet.{pid}.0123456789ab.tmp"
        catalog_tmp.write_bytes(b"PAR1")
        live_tmp = destination.root / f".catalog.parquet.{os.getpid()}.0123456789ab.tmp"
        live_tmp.write_bytes(b"PAR1")
        staging = destination.staging_dir / f"{UID_B}~{host_name()}~{pid}~abc123"
        staging.mkdir()
        assert destination.cleanup_leftovers() == 2
        assert not catalog_tmp.exists()
        assert not staging.exists()
        assert live_tmp.exists()


def test_cleanup_asks_the_callers_liveness_judgement(destination: Destination) -> None:
    other_host = destination.trash_dir / f"{UID_B}~node-elsewhere~4242~abc"
    other_host.mkdir()
    seen: list[tuple[str, int]] = []

    def live_owner(host: str, pid: int) -> bool:
        seen.append((host, pid))
        return False

    assert destination.cleanup_leftovers(live_owner=live_owner) == 1
    assert seen == [("node-elsewhere", 4242)]
    assert not other_host.exists()


def test_cleanup_removes_entries_older_than_the_age_limit(destination: Destination) -> None:
    old = destination.staging_dir / "not-one-of-ours"
    old.mkdir()
    young = destination.staging_dir / "also-not-ours"
    young.mkdir()
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    assert destination.cleanup_leftovers(max_age_s=24 * 3600) == 1
    assert not old.exists()
    assert young.exists()


def test_rename_no_replace_refuses_an_empty_directory_target(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"x")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(FileExistsError):
        rename_no_replace(source, target)
    assert (source / "f").exists()
    assert list(target.iterdir()) == []
    target.rmdir()
    rename_no_replace(source, target)
    assert (target / "f").read_bytes() == b"x"


def test_published_directories_get_the_usual_mode_not_the_private_staging_mode(
    destination: Destination,
) -> None:
    reference = destination.root / "made-by-mkdir"
    reference.mkdir(mode=0o777)
    final, _ = publish_series(destination, UID_A, str(SERIES_PATH), {"1-001.dcm": b"x"})
    assert stat.S_IMODE(final.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_cleanup_removes_old_crash_litter_in_the_state_dir(destination: Destination) -> None:
    old_temp = destination.state_dir / ".snapshot.jsonl.zst.4242.abcdef.tmp"
    old_probe = destination.state_dir / f".probe~{host_name()}~4242~ab"
    fresh_temp = destination.state_dir / ".last-report.json.4243.abcdef.tmp"
    keep = destination.state_dir / "last-report.json"
    for path in (old_temp, old_probe, fresh_temp, keep):
        path.write_text("x")
    past = time.time() - 3 * 24 * 3600
    for path in (old_temp, old_probe, keep):
        os.utime(path, (past, past))
    assert destination.cleanup_leftovers() == 2
    assert not old_temp.exists() and not old_probe.exists()
    assert fresh_temp.exists() and keep.exists()
