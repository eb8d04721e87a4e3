"""DICOM UID syntax (PS3.5 §9.1), the one rule every input path applies.

A UID is at most 64 characters of digit components separated by single dots; a component
of more than one digit never starts with ``0``. Manifests, CSV files, job files and command
line arguments are all checked here, so no malformed UID ever reaches a URL or a path.
"""

from __future__ import annotations

import re

__all__ = ["MAX_UID_LENGTH", "is_valid_uid", "uid_problem"]

MAX_UID_LENGTH = 64
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")


def uid_problem(text: str) -> str | None:
    """Say what is wrong with ``text`` as a UID, or return None when it is valid."""
    if not text:
        return "empty UID"
    if len(text) > MAX_UID_LENGTH:
        return f"UID is {len(text)} characters long; the limit is {MAX_UID_LENGTH}"
    if _UID_RE.fullmatch(text) is None:
        if any(ch not in "0123456789." for ch in text):
            return "a UID holds only digits and dots"
        if ".." in text or text.startswith(".") or text.endswith("."):
            return "empty component between dots"
        if "." not in text:
            return "a UID has at least two components"
        return "a component of more than one digit starts with 0"
    return None


def is_valid_uid(text: str) -> bool:
    """True when ``text`` is a syntactically valid DICOM UID."""
    return uid_problem(text) is None
