"""Member-name policy: NBIA's names pass, everything that could escape or collide does not."""

from __future__ import annotations

import pytest

from tcia_fetch.errors import UnsafeArchiveError
from tcia_fetch.series.names import MemberNames, member_name_problem


@pytest.mark.parametrize(
    "name", ["LICENSE", "md5hashes.csv", "00000001.dcm", "1-001.dcm", "12-0345.dcm", "a" * 255]
)
def test_nbia_names_are_accepted(name: str) -> None:
    assert member_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("dir/", "directory entry"),
        ("dir\\", "directory entry"),
        ("/etc/passwd", "absolute path"),
        ("\\\\host\\share\\x", "absolute path"),
        ("C:\\x", "drive letter"),
        ("c:x", "drive letter"),
        ("../x", "'..' component"),
        ("a/../../x", "'..' component"),
        ("..\\x", "'..' component"),
        ("..", "'..' component"),
        ("sub/x.dcm", "path separator"),
        ("sub\\x.dcm", "path separator"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("a\x7fb", "control character"),
        ("a" * 256, "256 characters"),
        ("é.dcm", "non-ASCII"),
        ("\u202egpj.dcm", "non-ASCII"),
        ("０１.dcm", "non-ASCII"),
        (".", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("-rf", "starts with '-'"),
        ("a b.dcm", "outside [A-Za-z0-9._-]"),
        ("ab:c", "outside [A-Za-z0-9._-]"),
    ],
)
def test_unsafe_names_are_explained(name: str, reason: str) -> None:
    problem = member_name_problem(name)
    assert problem is not None and reason in problem


def test_duplicates_are_refused_exactly_and_ignoring_case() -> None:
    names = MemberNames()
    names.admit("LICENSE", index=0)
    names.admit("00000001.dcm", index=1)
    with pytest.raises(UnsafeArchiveError, match="duplicate"):
        names.admit("00000001.dcm", index=2)
    with pytest.raises(UnsafeArchiveError, match="only by case from earlier member 'LICENSE'"):
        names.admit("License", index=2)
    with pytest.raises(UnsafeArchiveError, match="#3 has unsafe name"):
        names.admit("../LICENSE", index=2)
