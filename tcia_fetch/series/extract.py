"""Extract and verify one series archive in a single pass, as its bytes arrive.

:class:`SeriesExtractor` is the pure, synchronous core the engine drives from a worker thread:
``feed()`` each batch of body bytes, then ``finish()``. Every check happens inline, so a bad
archive stops the download as soon as the evidence is in, and a good one is verified the
moment its last byte arrives. ``finish()`` returns a :class:`VerifiedSeries` only when all of
these hold; otherwise it (or an earlier ``feed()``) raises an IntegrityError subclass whose
message names the member and the numbers:

* the archive is a complete, self-consistent zip (:mod:`tcia_fetch.series.zipstream`);
* member names are single safe path components, unique even ignoring case
  (:mod:`tcia_fetch.series.names`), and every member is a regular file;
* at most one ``LICENSE`` and one ``md5hashes.csv``; every other member is a DICOM Part-10
  file (``DICM`` at offset 128);
* the server's figures are plausible at all (:mod:`tcia_fetch.series.plausible`), and the caps
  derived from them (:class:`~tcia_fetch.series.limits.ArchiveLimits`) hold at every byte:
  DICOM bytes, member count, raw archive bytes, LICENSE and md5-list sizes (the list's cap
  shrinks to the DICOM members actually seen when it starts; it is parsed as it streams and
  never buffered whole);
* the instance count equals ``ObjectCount``, the DICOM byte total equals ``TotalSizeInBytes``;
* ``md5hashes.csv`` lists exactly the DICOM members, each with its actual MD5 (required when
  ``require_md5``; checked whenever present).

Files are only ever created by this class, with ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to a
descriptor of ``staging_dir`` under an already validated name, so nothing is written outside
it. On failure the staging directory holds partial files: the caller deletes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tcia_fetch.errors import (
    ArchiveCorruptError,
    ArchiveTooLargeError,
    ChecksumMismatchError,
    CountMismatchError,
    DestinationError,
    DiskFullError,
    InputError,
    MetadataError,
    SizeMismatchError,
    StorageError,
    TciaFetchError,
    UnsafeArchiveError,
)
from tcia_fetch.series.archive import MD5SUMS_NAME, TarZstWriter, archive_name, md5sums_text
from tcia_fetch.series.dicom_meta import (
    DICOM_HEAD_BYTES,
    DICOM_MAGIC_END,
    has_dicom_magic,
    read_sop_class_uid,
)
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.limits import ArchiveLimits, md5_list_cap
from tcia_fetch.series.md5list import MD5_LIST_NAME, Md5ListParser
from tcia_fetch.series.names import MemberNames, member_name_problem
from tcia_fetch.series.plausible import check_plausible
from tcia_fetch.series.zipstream import MemberHeader, StreamedMember, ZipStreamReader

if TYPE_CHECKING:
    from tcia_fetch.series.zipformat import CentralEntry

__all__ = ["LICENSE_NAME", "MIN_DICOM_FILE_BYTES", "SeriesExtractor", "VerifiedFile", "VerifiedSeries"]

LICENSE_NAME = "LICENSE"
#: A Part-10 file is at least its preamble and magic.
MIN_DICOM_FILE_BYTES = DICOM_MAGIC_END

FileKind = Literal["dicom", "license", "zip", "tar.zst"]
Keep = Literal["dicom", "zip", "tar.zst"]
_MemberKind = Literal["dicom", "license", "md5list"]
#: The "descriptor" of an archive written to an ``archive_sink`` rather than a file (never a real fd).
_SINK_FD = -1
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Starts writeback of a file's dirty pages without waiting (Linux; absent elsewhere, where the
#: fsync at finish simply does all the work).
_START_WRITEBACK = getattr(os, "posix_fadvise", None)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 0)


@dataclass(frozen=True, slots=True)
class VerifiedFile:
    """A file in the staging directory as verified: its name there, size in bytes, MD5 (hex)."""

    name: str
    size: int
    md5: str
    kind: FileKind


@dataclass(frozen=True, slots=True)
class VerifiedSeries:
    """A series whose archive passed every check; ``files`` are what ``staging_dir`` holds.

    ``dicom_bytes`` equals the expectation's ``total_bytes`` and ``instance_count`` its
    ``instance_count``; ``archive_bytes`` is the raw body size as served.
    """

    series_uid: str
    instance_count: int
    dicom_bytes: int
    archive_bytes: int
    sop_class_uid: str | None
    files: tuple[VerifiedFile, ...]


@dataclass(slots=True)
class _OpenMember:
    name: str
    kind: _MemberKind
    fd: int | None
    md5: hashlib._Hash
    head: bytearray
    head_limit: int
    size: int = 0


class SeriesExtractor:
    """Streaming extractor and verifier for one series archive; see the module docstring.

    ``keep="dicom"`` writes LICENSE and the DICOM files into ``staging_dir`` (md5hashes.csv is
    verified, not kept); ``keep="zip"`` writes the body as served to ``<series_uid>.zip`` and
    extracts nothing, with the same verification; ``keep="tar.zst"`` spools each member into
    ``staging_dir`` and moves it into ``<series_uid>.tar.zst`` once verified
    (:mod:`tcia_fetch.series.archive`). ``fsync`` makes each file durable when it is
    complete and the directory at ``finish()``. ``archive_bytes`` and ``dicom_bytes`` may be
    read between ``feed()`` calls for progress.
    """

    def __init__(
        self,
        expectation: SeriesExpectation,
        staging_dir: Path,
        *,
        keep: Keep = "dicom",
        require_md5: bool = True,
        limits: ArchiveLimits | None = None,
        fsync: bool = True,
        archive_sink: Callable[[memoryview], None] | None = None,
    ) -> None:
        uid = expectation.series_uid
        check_plausible(expectation)
        if expectation.instance_count < 1:
            raise MetadataError(
                f"the server reports {expectation.instance_count} instances: nothing to verify against",
                series_uid=uid,
            )
        if expectation.total_bytes < expectation.instance_count * MIN_DICOM_FILE_BYTES:
            raise MetadataError(
                f"the server reports {expectation.total_bytes} bytes for {expectation.instance_count} "
                f"instances, less than {MIN_DICOM_FILE_BYTES} bytes each",
                series_uid=uid,
            )
        zip_name = archive_name(uid, "zip")
        if member_name_problem(zip_name) is not None:
            raise InputError(f"series UID {uid[:80]!r} cannot name a file")
        self.expectation = expectation
        self.staging_dir = staging_dir
        self.keep = keep
        self.require_md5 = require_md5
        self.limits = limits if limits is not None else ArchiveLimits.for_expectation(expectation)
        self.fsync = fsync
        self.archive_bytes = 0
        self.dicom_bytes = 0
        self._reader = ZipStreamReader(self)
        self._names = MemberNames()
        self._current: _OpenMember | None = None
        self._files: list[VerifiedFile] = []
        self._dicom_md5: dict[str, str] = {}
        self._md5_list: Md5ListParser | None = None
        self._md5_list_cap = 0
        self._md5_list_error: ChecksumMismatchError | None = None
        self._sop_class_uid: str | None = None
        self._failure: Exception | None = None
        self._result: VerifiedSeries | None = None
        self._closed = False
        self._zip_fd: int | None = None
        self._zip_md5 = hashlib.md5(usedforsecurity=False)
        self._zip_name = zip_name
        self._dir_fd: int | None = None
        self._unsynced: list[str] = []
        self._archive: TarZstWriter | None = None
        self._archive_fd: int | None = None
        self._archive_name = archive_name(uid, "tar.zst")
        #: keep zip/tar.zst into an object store: the archive's bytes go to this sink as they are
        #: produced (a streamed upload) instead of a file in the staging directory.
        self._archive_sink = archive_sink if keep in ("zip", "tar.zst") else None
        try:
            self._dir_fd = os.open(staging_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._storage_error(exc, "cannot open the staging directory", str(staging_dir)) from exc
        if keep == "zip" and self._archive_sink is not None:
            self._zip_fd = _SINK_FD
        elif keep == "zip":
            try:
                self._zip_fd = self._create(zip_name)
            except BaseException:
                self.close()
                raise
        elif keep == "tar.zst":
            try:
                sinking = self._archive_sink is not None
                self._archive_fd = _SINK_FD if sinking else self._create(self._archive_name)
                self._archive = TarZstWriter(self._archive_fd, self._write_view)
            except BaseException:
                self.close()
                raise

    # --- the caller's side -----------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the response body; raise as soon as something is wrong."""
        self._check_usable()
        try:
            self.archive_bytes += memoryview(data).nbytes
            if self.archive_bytes > self.limits.max_archive_bytes:
                raise ArchiveTooLargeError(
                    f"the archive passed {self.limits.max_archive_bytes} bytes "
                    f"({self.archive_bytes} so far), "
                    f"the most a series of {self.expectation.instance_count} instances and "
                    f"{self.expectation.total_bytes} DICOM bytes may take",
                    series_uid=self.expectation.series_uid,
                )
            if self._zip_fd is not None:
                self._zip_md5.update(data)
                self._write(self._zip_fd, data, self._zip_name)
            self._reader.feed(data)
        except Exception as exc:
            self._failure = _with_series(exc, self.expectation.series_uid)
            raise

    def finish(self) -> VerifiedSeries:
        """Declare the body complete and return the verified series, or raise why it is not."""
        if self._result is not None:
            return self._result
        self._check_usable()
        try:
            index = self._reader.finish()
            self._check_file_types(index.entries)
            self._check_totals()
            self._check_md5_list()
            files = tuple(self._files)
            if self._archive is not None and self._archive_fd is not None:
                files = (self._finish_archive(),)
            if self._zip_fd is not None:
                zip_fd, self._zip_fd = self._zip_fd, None
                if zip_fd != _SINK_FD:
                    self._sync_and_close(zip_fd, self._zip_name)
                files = (VerifiedFile(self._zip_name, self.archive_bytes, self._zip_md5.hexdigest(), "zip"),)
            if self.fsync:
                self._sync_files()
                self._sync_directory()
        except Exception as exc:
            self._failure = _with_series(exc, self.expectation.series_uid)
            raise
        self._result = VerifiedSeries(
            series_uid=self.expectation.series_uid,
            instance_count=len(self._dicom_md5),
            dicom_bytes=self.dicom_bytes,
            archive_bytes=self.archive_bytes,
            sop_class_uid=self._sop_class_uid,
            files=files,
        )
        return self._result

    def close(self) -> None:
        """Close every open file descriptor. Idempotent; deletes nothing (the caller owns that)."""
        if self._closed:
            return
        self._closed = True
        descriptors = [
            self._zip_fd,
            self._archive_fd,
            self._current.fd if self._current else None,
            self._dir_fd,
        ]
        self._zip_fd = None
        self._archive_fd = None
        self._dir_fd = None
        if self._current is not None:
            self._current.fd = None
        for fd in descriptors:
            if fd is not None and fd != _SINK_FD:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # Nothing of a finished or failed attempt outlives it: drop the per-member state (the
        # md5 map, the list parser, a DICOM head) so that whoever still holds this object (an
        # exception's traceback during a retry wait) holds no buffers through it.
        self._current = None
        self._md5_list = None
        self._dicom_md5 = {}
        self._files = []
        self._archive = None

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError(f"the extractor for series {self.expectation.series_uid} is closed")

    # --- the zip reader's side (ZipSink) ---------------------------------------------------------

    def member_started(self, header: MemberHeader) -> None:
        """Admit the member's name and kind, then create its file (never before the checks)."""
        # The name first: an unsafe archive is reported as such (and not retried) even when it is
        # also too large; the cap still stops a flood one member later.
        self._names.admit(header.name, index=header.index)
        number = header.index + 1
        if number > self.limits.max_members:
            raise ArchiveTooLargeError(
                f"member #{number} ({header.name[:100]!r}) is past the {self.limits.max_members} members "
                f"a series of {self.expectation.instance_count} instances may hold"
            )
        kind: _MemberKind = "dicom"
        if header.name == LICENSE_NAME:
            kind = "license"
        elif header.name == MD5_LIST_NAME:
            kind = "md5list"
            # NBIA appends the list after every instance: it may describe only the DICOM members
            # already seen (the claimed count when it comes first), and its bytes are capped to
            # match, so a list padded with junk or blank lines is cut off within a few KiB.
            rows = len(self._dicom_md5) or self.expectation.instance_count
            self._md5_list_cap = min(self.limits.max_md5_list_bytes, md5_list_cap(rows))
            self._md5_list = Md5ListParser(max_entries=rows)
        head_limit = 0
        if kind == "dicom":
            head_limit = DICOM_HEAD_BYTES if not self._dicom_md5 else DICOM_MAGIC_END
        fd = None
        if self.keep in ("dicom", "tar.zst") and kind != "md5list":
            if header.name in (self._archive_name, MD5SUMS_NAME) and self.keep == "tar.zst":
                raise UnsafeArchiveError(f"member name {header.name!r} is reserved for the tar.zst archive")
            fd = self._create(header.name)
        self._current = _OpenMember(
            name=header.name,
            kind=kind,
            fd=fd,
            md5=hashlib.md5(usedforsecurity=False),
            head=bytearray(),
            head_limit=head_limit,
        )

    def member_data(self, data: bytes | memoryview) -> None:
        """Check the caps with this chunk counted, then hash and write it."""
        member = self._current
        assert member is not None
        size = len(data)
        member.size += size
        if member.kind == "dicom":
            self.dicom_bytes += size
            if self.dicom_bytes > self.limits.max_dicom_bytes:
                raise ArchiveTooLargeError(
                    f"DICOM data passed the server's TotalSizeInBytes of {self.limits.max_dicom_bytes} bytes "
                    f"in member {member.name!r} ({self.dicom_bytes} bytes so far)"
                )
            if len(member.head) < member.head_limit:
                had_magic_bytes = len(member.head) >= DICOM_MAGIC_END
                member.head += data[: member.head_limit - len(member.head)]
                if not had_magic_bytes and len(member.head) >= DICOM_MAGIC_END:
                    self._check_dicom_magic(member)
        elif member.kind == "license":
            self._check_member_cap(member, self.limits.max_license_bytes)
        else:
            self._check_member_cap(member, self._md5_list_cap)
            assert self._md5_list is not None
            if self._md5_list_error is None:
                try:
                    self._md5_list.feed(data)
                except ChecksumMismatchError as exc:
                    # Held until the member's CRC has been checked (member_ended): a transfer
                    # that flipped a bit is a corrupt archive, not a bad list. Nothing more is
                    # parsed meanwhile, and the byte cap above still bounds the member.
                    self._md5_list_error = exc
        member.md5.update(data)
        if member.fd is not None:
            self._write(member.fd, data, member.name)

    def member_ended(self, streamed: StreamedMember) -> None:
        """Record the complete member; make its file durable and close it."""
        member = self._current
        assert member is not None
        digest = member.md5.hexdigest()
        if member.kind == "md5list" and self._md5_list_error is not None:
            raise self._md5_list_error
        if member.kind == "dicom":
            self._check_dicom_magic(member)
            if not self._dicom_md5:
                self._sop_class_uid = read_sop_class_uid(bytes(member.head))
            self._dicom_md5[member.name] = digest
        if member.fd is not None and self._archive is not None:
            fd, member.fd = member.fd, None
            os.close(fd)
            self._add_to_archive(member.name, member.size)
        elif member.fd is not None:
            fd, member.fd = member.fd, None
            self._sync_and_close(fd, member.name)
        if member.kind != "md5list" and self.keep == "dicom":
            self._files.append(VerifiedFile(member.name, streamed.uncompressed_size, digest, member.kind))
        self._current = None

    # --- checks ----------------------------------------------------------------------------------

    def _check_dicom_magic(self, member: _OpenMember) -> None:
        if not has_dicom_magic(bytes(member.head[:DICOM_MAGIC_END])):
            found = bytes(member.head[128:DICOM_MAGIC_END])
            raise ArchiveCorruptError(
                f"member {member.name!r} is not a DICOM Part-10 file: no 'DICM' at offset 128 "
                f"(found {found!r} in a member of {member.size}+ bytes)"
            )

    def _check_member_cap(self, member: _OpenMember, cap: int) -> None:
        if member.size > cap:
            raise ArchiveTooLargeError(
                f"member {member.name!r} passed its cap of {cap} bytes ({member.size} so far)"
            )

    def _check_file_types(self, entries: tuple[CentralEntry, ...]) -> None:
        for entry in entries:
            if entry.file_type != "regular":
                mode = f" (unix mode 0o{entry.unix_mode:06o})" if entry.unix_mode is not None else ""
                raise UnsafeArchiveError(
                    f"member {entry.name!r} is a {entry.file_type}{mode} in the central directory; "
                    "only regular files are accepted"
                )

    def _check_totals(self) -> None:
        expected = self.expectation
        count = len(self._dicom_md5)
        if count != expected.instance_count:
            raise CountMismatchError(
                f"the archive holds {count} DICOM instances; "
                f"the server's ObjectCount is {expected.instance_count}"
            )
        if self.dicom_bytes != expected.total_bytes:
            raise SizeMismatchError(
                f"the {count} DICOM instances hold {self.dicom_bytes} bytes; "
                f"the server's TotalSizeInBytes is "
                f"{expected.total_bytes} (difference {self.dicom_bytes - expected.total_bytes:+d})"
            )

    def _check_md5_list(self) -> None:
        if self._md5_list is None:
            if self.require_md5:
                raise ChecksumMismatchError(
                    f"the archive has no {MD5_LIST_NAME} but MD5 verification is required (IncludeMD5=Yes)"
                )
            return
        listed = self._md5_list.finish()
        for name in listed:
            if name not in self._dicom_md5:
                raise ChecksumMismatchError(
                    f"{MD5_LIST_NAME} lists {name!r}, which is not a DICOM member of the archive"
                )
        unlisted = [name for name in self._dicom_md5 if name not in listed]
        if unlisted:
            raise ChecksumMismatchError(
                f"DICOM member {unlisted[0]!r} is not listed in {MD5_LIST_NAME} ({len(unlisted)} unlisted of "
                f"{len(self._dicom_md5)})"
            )
        for name, actual in self._dicom_md5.items():
            if listed[name] != actual:
                raise ChecksumMismatchError(
                    f"{name}: MD5 is {actual} but {MD5_LIST_NAME} says {listed[name]}"
                )

    # --- the tar.zst archive ------------------------------------------------------------------------

    def _add_to_archive(self, name: str, size: int) -> None:
        """Move a verified, spooled member into the archive (one member spooled at a time)."""
        assert self._archive is not None
        try:
            self._archive.add_spooled(self._require_dir_fd(), name, size)
        except OSError as exc:
            raise self._storage_error(exc, "cannot add to the archive", name) from exc

    def _finish_archive(self) -> VerifiedFile:
        """Append MD5SUMS, end the zstd frame, and hand the archive to the usual fsync path."""
        assert self._archive is not None and self._archive_fd is not None
        try:
            self._archive.add_bytes(MD5SUMS_NAME, md5sums_text(self._dicom_md5))
            size, md5 = self._archive.finish()
        except OSError as exc:
            raise self._storage_error(exc, "cannot finish", self._archive_name) from exc
        fd, self._archive_fd = self._archive_fd, None
        if fd != _SINK_FD:
            self._sync_and_close(fd, self._archive_name)
        return VerifiedFile(self._archive_name, size, md5, "tar.zst")

    # --- the file system -------------------------------------------------------------------------

    def _write_view(self, fd: int, data: memoryview) -> None:
        self._write(fd, data, self._archive_name)

    def _create(self, name: str) -> int:
        try:
            return os.open(name, _CREATE_FLAGS, 0o644, dir_fd=self._require_dir_fd())
        except OSError as exc:
            raise self._storage_error(exc, "cannot create", name) from exc

    def _write(self, fd: int, data: bytes | bytearray | memoryview, name: str) -> None:
        view = memoryview(data)
        if fd == _SINK_FD and self._archive_sink is not None:
            self._archive_sink(view)
            return
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            raise self._storage_error(exc, "cannot write", name) from exc

    def _sync_and_close(self, fd: int, name: str) -> None:
        """Close a finished file; with ``fsync``, start its writeback now and wait for it at finish.

        Waiting for the disk file by file would stall inflating on every member. Instead the
        kernel is told to start writing the file back at once (``POSIX_FADV_DONTNEED`` on dirty
        pages starts writeback without waiting) and :meth:`_sync_files` fsyncs every file just
        before the series is declared verified, when most of the data is already on disk: the
        same durability before publishing, with the disk and the CPU working at the same time.
        """
        try:
            if self.fsync:
                if _START_WRITEBACK is not None:
                    _START_WRITEBACK(fd, 0, 0, _DONTNEED)
                self._unsynced.append(name)
        except OSError as exc:
            raise self._storage_error(exc, "cannot start writing back", name) from exc
        finally:
            os.close(fd)

    def _sync_files(self) -> None:
        """Wait until every file written for this series is durable (see :meth:`_sync_and_close`)."""
        dir_fd = self._require_dir_fd()
        while self._unsynced:
            name = self._unsynced.pop()
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise self._storage_error(exc, "cannot fsync", name) from exc

    def _sync_directory(self) -> None:
        try:
            os.fsync(self._require_dir_fd())
        except OSError as exc:
            # Some filesystems cannot fsync a directory; the files themselves are durable.
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise self._storage_error(exc, "cannot fsync", str(self.staging_dir)) from exc

    def _require_dir_fd(self) -> int:
        if self._dir_fd is None:
            raise RuntimeError(f"the extractor for series {self.expectation.series_uid} is closed")
        return self._dir_fd

    def _storage_error(self, exc: OSError, action: str, name: str) -> StorageError:
        where = f"{action} {name!r} in staging directory {str(self.staging_dir)!r}: {exc.strerror or exc}"
        uid = self.expectation.series_uid
        if exc.errno in _DISK_FULL_ERRNOS:
            return DiskFullError(where, series_uid=uid)
        return DestinationError(where, series_uid=uid)


def _with_series(exc: Exception, series_uid: str) -> Exception:
    """Attach the series UID to our own errors that were raised without it."""
    if isinstance(exc, TciaFetchError) and exc.series_uid is None:
        exc.series_uid = series_uid
    return exc
