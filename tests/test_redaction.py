"""The secret registry: every spelling of a registered credential is scrubbed from any text."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus, urlencode

import pytest
from pydantic import SecretStr

from tcia_fetch.errors import RequestRejectedError, ServerError, redact_url
from tcia_fetch.redaction import (
    REDACTED,
    register_environment_secrets,
    register_secret,
    registered_secret_count,
    scrub,
    scrub_data,
)

PASSWORD = "Echo+pw/5d1e=7b2c 9a&x"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl-_"


@pytest.mark.parametrize(
    "spelling",
    [
        PASSWORD,
        quote_plus(PASSWORD, safe=""),  # a form body: Echo%2Bpw%2F5d1e%3D7b2c+9a%26x
        quote(PASSWORD, safe=""),
        quote(PASSWORD, safe="").lower().replace("echo", "Echo"),  # lower-case hex digits
        json.dumps(PASSWORD)[1:-1],
    ],
)
def test_every_spelling_of_the_password_is_scrubbed(spelling: str) -> None:
    register_secret(SecretStr(PASSWORD))
    text = f"HTTP 500: request body was: grant_type=password&password={spelling}&client_id=NBIA"
    scrubbed = scrub(text)
    assert spelling not in scrubbed
    assert f"password={REDACTED}&client_id=NBIA" in scrubbed


def test_a_form_echo_carries_no_password() -> None:
    register_secret(PASSWORD)
    form = urlencode({"grant_type": "password", "username": "u", "password": PASSWORD})
    assert PASSWORD not in scrub(form) and quote_plus(PASSWORD) not in scrub(form)
    assert scrub(form).endswith(f"password={REDACTED}")


@pytest.mark.parametrize("prefix", ["", "u:", "us:", "user:"])
def test_base64_at_any_alignment_is_scrubbed(prefix: str) -> None:
    register_secret(PASSWORD)
    encoded = base64.b64encode(f"{prefix}{PASSWORD}".encode()).decode()
    scrubbed = scrub(f"Authorization: Basic {encoded}")
    assert REDACTED in scrubbed
    # What is left of the base64 text is at most the few characters shared with the prefix.
    assert len(scrubbed) <= len("Authorization: Basic ") + len(REDACTED) + 12


def test_tokens_in_an_echoed_header_are_scrubbed_and_other_text_is_kept() -> None:
    register_secret(TOKEN)
    echo = f"Bad request. Headers received:\nAuthorization: Bearer {TOKEN}\nAccept: */*"
    assert scrub(echo) == f"Bad request. Headers received:\nAuthorization: Bearer {REDACTED}\nAccept: */*"


def test_short_and_empty_secrets_are_not_registered() -> None:
    register_secret("")  # the guest account's password
    register_secret("abc")
    register_secret(None)
    assert registered_secret_count() == 0
    assert scrub("abc and more") == "abc and more"


def test_environment_credentials_are_registered() -> None:
    register_environment_secrets(
        {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "HOME": "/home/me"}
    )
    assert scrub("key=wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY home=/home/me") == (
        f"key={REDACTED} home=/home/me"
    )


def test_errors_scrub_their_message_and_body_excerpt() -> None:
    register_secret(TOKEN)
    error = RequestRejectedError(
        f"HTTP 400 request rejected: Authorization: Bearer {TOKEN}",
        status=400,
        body_excerpt=f"Authorization: Bearer {TOKEN}",
    )
    for text in (str(error), error.describe(), error.body_excerpt, error.args[0]):
        assert TOKEN not in text and REDACTED in text
    # A secret registered after the error was made is still scrubbed when it is shown.
    late = ServerError("HTTP 500: sent abcdef123456", status=500)
    register_secret("abcdef123456")
    assert "abcdef123456" not in str(late)


def test_scrub_data_walks_json_like_values() -> None:
    register_secret(TOKEN)
    document = {"failures": [{"reason": f"Bearer {TOKEN}", "attempts": 2}], "ok": True}
    assert scrub_data(document) == {"failures": [{"reason": f"Bearer {REDACTED}", "attempts": 2}], "ok": True}


def test_error_bodies_are_scrubbed_before_they_are_cut() -> None:
    from tcia_fetch.api.status import BODY_EXCERPT_CHARS, error_for_status

    long_token = "T" * 40 + TOKEN
    register_secret(long_token)
    # The token straddles the excerpt's end: cutting first would keep its first half.
    body = "x" * (BODY_EXCERPT_CHARS - 20) + f" Bearer {long_token} trailing"
    error = error_for_status(400, body_text=body, headers={}, url="http://h/q")
    assert error is not None
    assert "TTTTTTTTTT" not in error.body_excerpt and "TTTTTTTTTT" not in str(error)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Nothing to hide: returned as given (the per-request fast path).
        ("http://h:1/v4/getImage?SeriesInstanceUID=1.2.3", "http://h:1/v4/getImage?SeriesInstanceUID=1.2.3"),
        ("https://u:pw@h/x?a=1", "https://REDACTED@h/x?a=1"),
        ("https://h/x?Token=abc&b=2", "https://h/x?Token=REDACTED&b=2"),
        ("https://h/x?%74oken=abc", "https://h/x?token=REDACTED"),  # an escaped key is still a key
        ("https://h/x?API_KEY=k", "https://h/x?API_KEY=REDACTED"),
        ("https://h/x?api_\u212aey=k", "https://h/x?api_%E2%84%AAey=REDACTED"),  # Kelvin sign lowers to k
        ("https://user:pw\uff20h/x", "<unparseable URL>"),  # a full-width at sign is user info to NFKC
        ("http://[::1/x", "<unparseable URL>"),
        ("http://[::1]:8080/x?password=p", "http://[::1]:8080/x?password=REDACTED"),
    ],
)
def test_urls_lose_user_info_and_secret_query_values(url: str, expected: str) -> None:
    assert redact_url(url) == expected
