"""Where a destination lives: a local directory or an S3-compatible bucket prefix.

Every place that accepts a destination (``run --out``, ``status``, ``verify``, ``catalog``, the
job file's ``[output].dest``) goes through :func:`parse_destination`, so a URL is never mistaken
for a directory name. The rule is deliberately strict:

* anything that starts like a URL scheme (two or more letters, digits, ``+.-`` then ``:``) is a
  URL, and only ``s3://bucket[/prefix]`` is accepted; ``gs://``, ``http://``, ``file://`` and the
  mangled ``s3:/bucket`` (what ``Path("s3://b")`` turns a URL into) are refused with exit 2;
* everything else is a local path. A directory whose name really starts with ``name:`` can be
  given as ``./name:...``.

Pure functions, no I/O: this runs before any network traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tcia_fetch.errors import InputError

__all__ = ["BucketLocation", "DestinationLocation", "looks_like_url", "parse_destination"]

_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
#: S3 bucket naming rules (the general-purpose bucket subset every S3-compatible store accepts).
_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MAX_PREFIX_BYTES: Final = 512


@dataclass(frozen=True, slots=True)
class BucketLocation:
    """``s3://bucket/prefix``: ``prefix`` has no leading or trailing slash ("" for the bucket root)."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (a '/'-separated name under the prefix)."""
        relative = relative.strip("/")
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __str__(self) -> str:
        return self.url


DestinationLocation = Path | BucketLocation


def looks_like_url(value: str) -> bool:
    """True when ``value`` starts with a URL scheme (and so must not be used as a path)."""
    return _SCHEME.match(value) is not None


def parse_destination(value: str | Path, *, source: str = "--out") -> DestinationLocation:
    """A local directory (``Path``, unchanged) or a :class:`BucketLocation`; InputError otherwise."""
    if isinstance(value, Path):
        text = str(value)
        if looks_like_url(text):
            # A URL that already went through Path() lost a slash ("s3:/lake"): never a folder.
            raise InputError(
                f"{text!r} looks like a mangled URL, not a directory; write s3://bucket/prefix "
                "(or ./name if you mean a local folder)",
                source=source,
            )
        return value
    text = value.strip()
    if not text:
        raise InputError("the destination is empty", source=source)
    match = _SCHEME.match(text)
    if match is None:
        return Path(text)
    scheme = match.group(1).lower()
    if scheme != "s3":
        raise InputError(
            f"unsupported destination scheme {scheme!r} in {_shown(text)}: give a local directory or "
            "s3://bucket/prefix (any S3-compatible store; endpoint from AWS_ENDPOINT_URL)",
            source=source,
        )
    if not text[match.end() :].startswith("//"):
        raise InputError(
            f"{_shown(text)} is not an s3:// URL: write s3://bucket/prefix (two slashes)", source=source
        )
    rest = text[match.end() + 2 :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise InputError(
            "credentials or ports do not belong in the destination URL: use the standard AWS "
            "settings (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL, ...)",
            source=source,
        )
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InputError(f"{bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)", source=source)
    if "?" in prefix or "#" in prefix:
        raise InputError(f"{_shown(text)}: query strings and fragments are not allowed", source=source)
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    for part in parts:
        if part in {"", ".", ".."} or any(ord(ch) < 32 for ch in part):
            raise InputError(f"the prefix {prefix!r} has an unsafe component {part!r}", source=source)
    if len(prefix.encode("utf-8")) > _MAX_PREFIX_BYTES:
        raise InputError(f"the prefix is longer than {_MAX_PREFIX_BYTES} bytes", source=source)
    return BucketLocation(bucket=bucket, prefix=prefix)


def _shown(text: str) -> str:
    return repr(text[:200])
