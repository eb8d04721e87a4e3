"""The object-store client: configured from the AWS chain only (env, profiles, region, endpoint)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.errors import EXIT_FATAL, ObjectStoreAuthError
from tcia_fetch.store._objstore import open_object_store
from tcia_fetch.store.location import BucketLocation
from tcia_fetch.testing.s3 import MotoS3

_CHAIN = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.client().create_bucket(Bucket="chain")
    yield server
    server.stop()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_s3: MotoS3) -> Path:
    for name in _CHAIN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    return tmp_path


def test_credentials_from_a_profile_in_the_shared_files(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "credentials").write_text(
        "[lab]\naws_access_key_id = AKIAPROFILE0000000000\naws_secret_access_key = profile-secret\n"
    )
    (clean_env / "config").write_text("[profile lab]\nregion = eu-west-3\n")
    monkeypatch.setenv("AWS_PROFILE", "lab")
    store = open_object_store(BucketLocation("chain", ""), policy=RetryPolicy(testing=True))
    store.check_bucket()
    assert store.region == "eu-west-3"


def test_aws_region_is_honoured(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV00000000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    store = open_object_store(BucketLocation("chain", ""), policy=RetryPolicy(testing=True))
    assert store.region == "ap-southeast-2"
    store.check_bucket()


def test_no_credentials_anywhere_is_fatal_and_says_where_to_put_them(clean_env: Path) -> None:
    store = open_object_store(BucketLocation("chain", "p"), policy=RetryPolicy(testing=True))
    with pytest.raises(ObjectStoreAuthError, match="AWS_PROFILE") as caught:
        store.check_bucket()
    assert caught.value.exit_code == EXIT_FATAL
