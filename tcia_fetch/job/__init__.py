"""Job input: TOML job files, ``.tcia`` manifests and CSV/TSV UID tables, validated up front.

Everything here is pure and synchronous and raises :class:`~tcia_fetch.errors.InputError`
(exit code 2) with the file, line or key to fix, before any network traffic. Entry point:
:func:`load_job`, which accepts any of the three inputs and returns a :class:`JobSpec`.
"""

from __future__ import annotations

from tcia_fetch.job.csvlist import UidTable, parse_uid_table, parse_uid_table_bytes, read_uid_table
from tcia_fetch.job.jobfile import (
    JobSpec,
    UidOrigin,
    load_job,
    load_job_file,
    parse_job_mapping,
    parse_job_toml,
)
from tcia_fetch.job.manifest import Manifest, parse_manifest, parse_manifest_bytes, read_manifest
from tcia_fetch.job.models import (
    DEFAULT_BASE_URL,
    LAYOUT_FIELDS,
    NAMED_LAYOUTS,
    DateRange,
    DownloadSection,
    IntRange,
    OutputSection,
    SeriesQuery,
    ServerSection,
    VerifySection,
)
from tcia_fetch.job.uidlist import DuplicateUid, LineProblem

__all__ = [
    "DEFAULT_BASE_URL",
    "LAYOUT_FIELDS",
    "NAMED_LAYOUTS",
    "DateRange",
    "DownloadSection",
    "DuplicateUid",
    "IntRange",
    "JobSpec",
    "LineProblem",
    "Manifest",
    "OutputSection",
    "SeriesQuery",
    "ServerSection",
    "UidOrigin",
    "UidTable",
    "VerifySection",
    "load_job",
    "load_job_file",
    "parse_job_mapping",
    "parse_job_toml",
    "parse_manifest",
    "parse_manifest_bytes",
    "parse_uid_table",
    "parse_uid_table_bytes",
    "read_manifest",
    "read_uid_table",
]
