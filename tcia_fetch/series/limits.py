"""How much a series archive may hold, derived from what the server promised before sending it.

The caps turn a zip bomb, an endless stream or a series that grew on the server into an early
:class:`~tcia_fetch.errors.ArchiveTooLargeError` from ``feed()`` instead of a full disk or an
exhausted memory: the extractor checks every cap as bytes arrive, never after the fact.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcia_fetch.series.expectation import SeriesExpectation

__all__ = [
    "ARCHIVE_FIXED_SLACK_BYTES",
    "ARCHIVE_PER_MEMBER_SLACK_BYTES",
    "ARCHIVE_PROPORTIONAL_SLACK",
    "LICENSE_MAX_BYTES",
    "MD5_LIST_ABSOLUTE_MAX_BYTES",
    "MD5_LIST_FIXED_BYTES",
    "MD5_LIST_PER_INSTANCE_BYTES",
    "NON_DICOM_MEMBERS",
    "ArchiveLimits",
    "md5_list_cap",
]

#: Members that are not DICOM instances: ``LICENSE`` (getImage) and ``md5hashes.csv`` (IncludeMD5).
NON_DICOM_MEMBERS = 2

#: Deflate never expands incompressible input by more than about 0.03 % (5 bytes per stored
#: block of up to 64 KiB); 1 % leaves room for that and for any reasonable encoder.
ARCHIVE_PROPORTIONAL_SLACK = 0.01
#: Covers the LICENSE member (capped at 1 MiB itself), the end-of-central-directory records
#: and any archive comment.
ARCHIVE_FIXED_SLACK_BYTES = 1 << 20
#: Covers, per member, a local header, a data descriptor and a central directory entry (about
#: 100 bytes plus twice the name) and one md5hashes.csv row (about 50 bytes).
ARCHIVE_PER_MEMBER_SLACK_BYTES = 1 << 10

#: The server builds LICENSE from a short template plus an optional agreement text.
LICENSE_MAX_BYTES = 1 << 20
#: ``<name>,<32 hex>\n`` is about 50 bytes; 200 tolerates long names and CRLF.
MD5_LIST_PER_INSTANCE_BYTES = 200
MD5_LIST_FIXED_BYTES = 1 << 10
#: Whatever the server claims: 250,000 instances (series/plausible.py) at 200 bytes a row is
#: 50 MB; no real list comes near this, so no claim can buy a bigger one.
MD5_LIST_ABSOLUTE_MAX_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Upper bounds for one series archive; every one is enforced while streaming.

    ``max_dicom_bytes``: real decompressed bytes of DICOM members (never header claims).
    ``max_members``: local entries of any kind. ``max_archive_bytes``: raw bytes as served.
    ``max_license_bytes`` and ``max_md5_list_bytes``: the two non-DICOM members.
    """

    max_dicom_bytes: int
    max_members: int
    max_archive_bytes: int
    max_license_bytes: int
    max_md5_list_bytes: int

    @classmethod
    def for_expectation(cls, expectation: SeriesExpectation) -> ArchiveLimits:
        """The caps for a series whose server figures are ``expectation``.

        DICOM bytes get no slack at all: the verified total must equal ``total_bytes``, so one
        byte more is already a failure (a bomb, or a series that grew on the server since its
        size was looked up; the caller may refresh the metadata once before giving up).
        Members: every instance plus LICENSE and md5hashes.csv. Raw archive bytes:
        ``total_bytes * 1.01 + 1 MiB + 1 KiB * max_members`` (see the constants above for why).
        """
        max_members = expectation.instance_count + NON_DICOM_MEMBERS
        max_archive_bytes = (
            int(expectation.total_bytes * (1 + ARCHIVE_PROPORTIONAL_SLACK))
            + ARCHIVE_FIXED_SLACK_BYTES
            + ARCHIVE_PER_MEMBER_SLACK_BYTES * max_members
        )
        return cls(
            max_dicom_bytes=expectation.total_bytes,
            max_members=max_members,
            max_archive_bytes=max_archive_bytes,
            max_license_bytes=LICENSE_MAX_BYTES,
            max_md5_list_bytes=md5_list_cap(expectation.instance_count),
        )


def md5_list_cap(rows: int) -> int:
    """The most bytes ``md5hashes.csv`` may take when it describes at most ``rows`` files.

    The extractor asks again when the list starts, with the DICOM members it has actually seen
    (NBIA appends the list last), so a padded list is cut off after a few KiB on a small series.
    """
    return min(MD5_LIST_PER_INSTANCE_BYTES * rows + MD5_LIST_FIXED_BYTES, MD5_LIST_ABSOLUTE_MAX_BYTES)
