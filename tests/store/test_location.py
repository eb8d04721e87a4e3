"""Destination URLs: s3:// is a bucket, a path is a path, anything else is refused (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.errors import EXIT_BAD_INPUT, InputError
from tcia_fetch.store.location import BucketLocation, parse_destination


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://lake/tcia", "lake", "tcia"),
        ("s3://lake", "lake", ""),
        ("s3://lake/", "lake", ""),
        ("s3://my.lake-1/a/b/c/", "my.lake-1", "a/b/c"),
    ],
)
def test_s3_urls_name_a_bucket_and_prefix(text: str, bucket: str, prefix: str) -> None:
    location = parse_destination(text)
    assert location == BucketLocation(bucket, prefix)
    assert isinstance(location, BucketLocation)
    assert location.key("x/y.tar.zst") == (f"{prefix}/x/y.tar.zst" if prefix else "x/y.tar.zst")


@pytest.mark.parametrize("text", ["/data/tcia", "relative/dir", "./odd:name", "C", "~/x"])
def test_local_paths_stay_paths(text: str) -> None:
    assert parse_destination(text) == Path(text)


@pytest.mark.parametrize(
    "text",
    [
        "gs://lake/tcia",
        "http://lake/tcia",
        "file:///data/tcia",
        "s3:/lake/tcia",
        "s3:lake",
        "S3://Lake/x",
        "s3://ab/x",
        "s3://user:secret@lake/x",
        "s3://lake/../x",
        "s3://lake/a?versionId=1",
    ],
)
def test_other_schemes_and_malformed_urls_are_bad_input(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_destination(text)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert "--out" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_a_url_already_mangled_by_path_is_refused() -> None:
    with pytest.raises(InputError, match="mangled URL"):
        parse_destination(Path("s3://lake/tcia"))
