"""Service API authentication with SharedAccessSignature tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import pytest

from dpsd.domain.sas import ALL_RIGHTS, AccessRights, SharedAccessPolicy
from dpsd.service.auth import ServiceAuthenticator, authenticate, require
from dpsd.service.errors import Unauthorized

NOW = 1_700_000_000
HOST = "localhost"
OWNER = SharedAccessPolicy(
    name="provisioningserviceowner",
    primary_key=base64.b64encode(b"p" * 32).decode(),
    secondary_key=base64.b64encode(b"s" * 32).decode(),
    rights=ALL_RIGHTS,
)
READER = SharedAccessPolicy(
    name="enrollmentread",
    primary_key=base64.b64encode(b"r" * 32).decode(),
    secondary_key=base64.b64encode(b"R" * 32).decode(),
    rights=AccessRights.ENROLLMENT_READ,
)
POLICIES = {policy.name: policy for policy in (OWNER, READER)}


def token(
    audience: str = HOST,
    key_name: str | None = OWNER.name,
    key: str = OWNER.primary_key,
    *,
    expiry: int = NOW + 3600,
    encode: bool = True,
) -> str:
    """A token as the SDKs write one; the signature covers sr exactly as sent."""
    resource = quote(audience, safe="") if encode else audience
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
    signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
    text = f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}"
    return text + (f"&skn={key_name}" if key_name else "")


def auth(header: str | None, host: str = HOST) -> SharedAccessPolicy:
    return authenticate(header, POLICIES, now=NOW, host=host)


def test_primary_key_is_accepted() -> None:
    assert auth(token()) is OWNER


def test_secondary_key_is_accepted() -> None:
    assert auth(token(key=OWNER.secondary_key)) is OWNER
    assert auth(token(key_name=READER.name, key=READER.secondary_key)) is READER


@pytest.mark.parametrize(
    "audience", ["localhost", "LOCALHOST", "https://localhost:8443/", "localhost:8443"]
)
@pytest.mark.parametrize("encode", [True, False])
def test_audience_forms_naming_this_host(audience: str, encode: bool) -> None:
    assert auth(token(audience, encode=encode)) is OWNER


def test_host_is_compared_case_insensitively() -> None:
    assert auth(token("mydps.example"), host="MyDps.Example") is OWNER


def test_a_set_of_names_accepts_each_and_nothing_else() -> None:
    names = {"localhost", "127.0.0.1", "::1", "dps.example"}
    for audience in ("dps.example", "https://127.0.0.1:8443", "[::1]:8443", "LOCALHOST"):
        assert authenticate(token(audience), POLICIES, now=NOW, host=names) is OWNER
    for audience in ("other.example", "dps.example.evil", ""):
        with pytest.raises(Unauthorized):
            authenticate(token(audience), POLICIES, now=NOW, host=names)


def test_the_service_authenticator_checks_its_own_names_once_per_token() -> None:
    authenticator = ServiceAuthenticator(POLICIES, {"localhost", "dps.example"})
    accepted = token("dps.example")
    assert authenticator.authenticate(accepted, now=NOW) is OWNER
    assert authenticator.authenticate(accepted, now=NOW) is OWNER  # remembered
    with pytest.raises(Unauthorized, match="audience"):
        authenticator.authenticate(token("other.example"), now=NOW)
    with pytest.raises(Unauthorized, match="expired"):
        authenticator.authenticate(accepted, now=NOW + 3600)


def test_node_field_order() -> None:
    text = token()
    fields = dict(part.split("=", 1) for part in text.split(" ", 1)[1].split("&"))
    node = f"SharedAccessSignature sr={fields['sr']}&sig={fields['sig']}"
    node += f"&skn={fields['skn']}&se={fields['se']}"
    assert auth(node) is OWNER


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "needs an Authorization header"),
        ("", "needs an Authorization header"),
        ("Bearer abc", "not a SharedAccessSignature"),
        ("SharedAccessSignature sr=localhost", "lacks sig, se"),
        (token().replace("se=", "se=x"), "expiry"),
        (token(key_name=None), "names no shared access policy"),
        (token(key_name="iothubowner"), "names no shared access policy"),
        (token(key=READER.primary_key), "signature does not match"),
        (token(key_name=READER.name, key=OWNER.primary_key), "signature does not match"),
        (token(expiry=NOW), "expired"),
        (token(expiry=NOW - 1), "expired"),
        (token("evil.example"), "audience"),
        (token("localhost.evil.example"), "audience"),
        (token("https://evil.example/localhost"), "audience"),
        (token(""), "lacks sr"),
    ],
)
def test_refused(header: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        auth(header)


def test_tampered_expiry_is_refused() -> None:
    text = token(expiry=NOW + 10).replace(f"se={NOW + 10}", f"se={NOW + 10_000}")
    with pytest.raises(Unauthorized, match="signature"):
        auth(text)


def test_one_second_before_expiry_is_fine() -> None:
    assert auth(token(expiry=NOW + 1)) is OWNER


def test_require_passes_a_policy_holding_the_right() -> None:
    require(OWNER, AccessRights.ENROLLMENT_WRITE)
    require(READER, AccessRights.ENROLLMENT_READ)


def test_require_refuses_a_policy_lacking_the_right() -> None:
    with pytest.raises(Unauthorized, match="'enrollmentread' lacks the EnrollmentWrite right"):
        require(READER, AccessRights.ENROLLMENT_WRITE)
    with pytest.raises(Unauthorized, match="RegistrationStatusWrite"):
        require(READER, AccessRights.REGISTRATION_STATUS_WRITE)
