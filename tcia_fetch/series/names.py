"""Which archive member names may become files: one plain path component, each at most once.

A bad name is rejected, never sanitised: Python's ``ZipFile.extract`` rewrites ``../x`` to
``x`` and ``/etc/x`` to ``etc/x``, so two members can silently land on one file. NBIA's names
(``LICENSE``, ``00000001.dcm``, ``1-001.dcm``, ``md5hashes.csv``) all fit the allow-list below,
so anything else means the archive is not what the server builds.
"""

from __future__ import annotations

import re

from tcia_fetch.errors import UnsafeArchiveError

__all__ = ["MAX_MEMBER_NAME_CHARS", "MemberNames", "member_name_problem"]

MAX_MEMBER_NAME_CHARS = 255
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_DRIVE = re.compile(r"[A-Za-z]:")


def member_name_problem(name: str) -> str | None:
    """Say why ``name`` may not become a file in the staging directory, or None if it may."""
    if _SAFE_NAME.fullmatch(name) is not None:
        return None
    if not name:
        return "the name is empty"
    if name.endswith(("/", "\\")):
        return "it is a directory entry"
    if name.startswith(("/", "\\")):
        return "it is an absolute path"
    if _DRIVE.match(name):
        return "it starts with a drive letter"
    if any(part == ".." for part in re.split(r"[/\\]", name)):
        return "it contains a '..' component"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "it contains a NUL or control character"
    if len(name) > MAX_MEMBER_NAME_CHARS:
        return f"it is {len(name)} characters long (limit {MAX_MEMBER_NAME_CHARS})"
    if not name.isascii():
        return "it contains non-ASCII characters"
    if name[0] in "._-":
        return f"it starts with {name[0]!r}"
    return "it contains characters outside [A-Za-z0-9._-]"


class MemberNames:
    """The names admitted so far for one archive; refuses duplicates, also case-insensitively.

    Case matters because the destination may be a case-insensitive filesystem (macOS, an SMB
    share), where ``A.dcm`` and ``a.dcm`` are the same file.
    """

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def admit(self, name: str, *, index: int) -> None:
        """Accept ``name`` for member number ``index`` (0-based) or raise UnsafeArchiveError."""
        problem = member_name_problem(name)
        if problem is not None:
            raise UnsafeArchiveError(f"member #{index + 1} has unsafe name {name[:300]!r}: {problem}")
        folded = name.casefold()
        earlier = self._seen.get(folded)
        if earlier == name:
            raise UnsafeArchiveError(f"member #{index + 1} {name!r} is a duplicate of an earlier member")
        if earlier is not None:
            raise UnsafeArchiveError(
                f"member #{index + 1} {name!r} differs only by case from earlier member {earlier!r}"
            )
        self._seen[folded] = name
