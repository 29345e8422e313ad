"""The client's duplicated SAS signing and connection strings, checked against the server's
verifier; its errors, read from DPS error bodies."""

from __future__ import annotations

import base64
import re
import time
from urllib.parse import unquote

import httpx
import pytest

from dpsd.client import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    UnauthorizedError,
    UnexpectedStatusError,
)
from dpsd.client._auth import ConnectionString, sas_token
from dpsd.client._errors import error_from_response
from dpsd.domain.sas import audience_host, parse_token, signed_by

KEY = base64.b64encode(bytes(range(32))).decode()


def test_tokens_verify_with_the_servers_verifier() -> None:
    token = parse_token(sas_token("localhost", "provisioningserviceowner", KEY, now=1000))
    assert signed_by(token, base64.b64decode(KEY))
    assert not signed_by(token, b"other key")
    assert token.expiry == 1000 + 3600
    assert token.key_name == "provisioningserviceowner"
    assert audience_host(token.audience) == "localhost"


def test_each_token_is_fresh() -> None:
    token = parse_token(sas_token("dps.example", "owner", KEY))
    assert abs(token.expiry - (time.time() + 3600)) < 60


@pytest.mark.parametrize(
    ("host_name", "endpoint", "host"),
    [
        ("localhost", "https://localhost", "localhost"),
        ("LocalHost:8443", "https://LocalHost:8443", "localhost"),
        ("http://localhost:8080", "http://localhost:8080", "localhost"),
        ("https://dps.example.net", "https://dps.example.net", "dps.example.net"),
        ("127.0.0.1:8443", "https://127.0.0.1:8443", "127.0.0.1"),
    ],
)
def test_connection_strings(host_name: str, endpoint: str, host: str) -> None:
    text = f"HostName={host_name};SharedAccessKeyName=owner;SharedAccessKey={KEY}"
    parsed = ConnectionString.parse(text)
    assert (parsed.endpoint, parsed.host, parsed.key_name, parsed.key) == (
        endpoint,
        host,
        "owner",
        KEY,
    )
    assert unquote(parse_token(sas_token(parsed.host, "owner", KEY)).resource) == host


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"SharedAccessKeyName=owner;SharedAccessKey={KEY}", "lacks HostName"),
        ("HostName=localhost;SharedAccessKeyName=owner", "lacks SharedAccessKey"),
        ("HostName=localhost;SharedAccessKeyName=o;SharedAccessKey=not base64!", "not base64"),
        (f"HostName=ftp://host;SharedAccessKeyName=owner;SharedAccessKey={KEY}", "http(s) URL"),
        ("nonsense", "part 'nonsense' is not NAME=VALUE"),
        (f"HostName=;SharedAccessKeyName=owner;SharedAccessKey={KEY}", "HostName has no value"),
    ],
)
def test_bad_connection_strings(text: str, words: str) -> None:
    """Each message says which part is wrong, then what a connection string is."""
    form = "; a connection string is HostName=HOST[:PORT];SharedAccessKeyName=POLICY;"
    with pytest.raises(ValueError, match=re.escape(words) + ".*" + re.escape(form)):
        ConnectionString.parse(text)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, UnauthorizedError),
        (404, NotFoundError),
        (409, ConflictError),
        (412, PreconditionFailedError),
        (413, PayloadTooLargeError),
        (415, UnexpectedStatusError),
        (500, UnexpectedStatusError),
    ],
)
def test_errors_by_status(status: int, error_class: type[Exception]) -> None:
    body = {
        "errorCode": status * 1000 + 1,
        "trackingId": "t-1",
        "message": "Something happened",
        "timestampUtc": "2026-01-01T00:00:00.0000000Z",
        "info": {},
    }
    error = error_from_response(httpx.Response(status, json=body))
    assert type(error) is error_class
    assert (error.status_code, error.error_code, error.tracking_id) == (
        status,
        status * 1000 + 1,
        "t-1",
    )
    assert str(error) == f"{status * 1000 + 1} Something happened (tracking id t-1)"


def test_an_error_without_a_dps_body() -> None:
    error = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, UnexpectedStatusError)
    assert (error.error_code, error.tracking_id) == (None, None)
    assert str(error) == "HTTP 502 <html>bad gateway</html>"
    empty = error_from_response(httpx.Response(404, headers={"x-ms-error-code": "404000"}))
    assert isinstance(empty, NotFoundError)
    assert str(empty) == "404000 Not Found"
