"""SharedAccessSignature tokens: parsing, signatures, audiences and access rights."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.errors import InvalidToken
from dpsd.domain.sas import (
    ALL_RIGHTS,
    RIGHT_NAMES,
    AccessRights,
    SasToken,
    SharedAccessPolicy,
    audience_host,
    format_rights,
    make_token,
    parse_rights,
    parse_token,
    sign,
    signed_by,
)
from tests.unit.support import FAST

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
EXPIRY = 1_700_003_600


def signature_of(resource: str, key: bytes = KEY, expiry: int = EXPIRY) -> str:
    """base64(HMAC-SHA256(key, sr + "\\n" + se)), computed here independently of dpsd."""
    digest = hmac.new(key, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def header(*fields: tuple[str, str]) -> str:
    return "SharedAccessSignature " + "&".join(f"{name}={value}" for name, value in fields)


SIG = quote(signature_of("localhost"), safe="")
FIELDS = (("sr", "localhost"), ("sig", SIG), ("se", str(EXPIRY)), ("skn", "owner"))
EXPECTED = SasToken(
    resource="localhost",
    signature=base64.b64decode(signature_of("localhost")),
    expiry=EXPIRY,
    key_name="owner",
)


@pytest.mark.parametrize("order", list(itertools.permutations(FIELDS)))
def test_fields_parse_in_any_order(order: tuple[tuple[str, str], ...]) -> None:
    assert parse_token(header(*order)) == EXPECTED


def test_node_order_sr_sig_skn_se() -> None:
    token = parse_token(
        f"SharedAccessSignature sr=localhost&sig={SIG}&skn=owner&se={EXPIRY}",
    )
    assert token == EXPECTED
    assert signed_by(token, KEY)


def test_skn_is_optional() -> None:
    token = parse_token(header(*FIELDS[:3]))
    assert token.key_name is None


def test_skn_is_url_decoded() -> None:
    token = parse_token(header(*FIELDS[:3], ("skn", "my%20policy")))
    assert token.key_name == "my policy"


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_token(f"  {header(*FIELDS)}\t\n") == EXPECTED


@pytest.mark.parametrize("missing", ["sr", "sig", "se"])
def test_missing_field_is_refused(missing: str) -> None:
    fields = [field for field in FIELDS if field[0] != missing]
    with pytest.raises(InvalidToken, match=f"lacks {missing}"):
        parse_token(header(*fields))


@pytest.mark.parametrize("empty", ["sr", "sig", "se"])
def test_empty_field_is_refused(empty: str) -> None:
    fields = [(name, "" if name == empty else value) for name, value in FIELDS]
    with pytest.raises(InvalidToken, match=f"lacks {empty}"):
        parse_token(header(*fields))


@pytest.mark.parametrize("repeated", ["sr", "sig", "se", "skn"])
def test_repeated_field_is_refused(repeated: str) -> None:
    again = next(field for field in FIELDS if field[0] == repeated)
    with pytest.raises(InvalidToken, match="repeated"):
        parse_token(header(*FIELDS, again))


@pytest.mark.parametrize(
    "text",
    [
        header(*FIELDS, ("extra", "1")),  # unknown field
        header(*FIELDS) + "&",  # empty part
        header(*FIELDS) + "&sr",  # part without '='
        header(("SR", "localhost"), *FIELDS[1:]),  # names are case-sensitive
    ],
)
def test_unexpected_fields_are_refused(text: str) -> None:
    with pytest.raises(InvalidToken, match="unexpected"):
        parse_token(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SharedAccessSignature",
        "SharedAccessSignature ",
        "Bearer abc",
        "sharedaccesssignature " + header(*FIELDS).split(" ", 1)[1],
        header(*FIELDS).replace(" ", "\t", 1),
    ],
)
def test_other_schemes_are_refused(text: str) -> None:
    with pytest.raises(InvalidToken, match="not a SharedAccessSignature"):
        parse_token(text)


@pytest.mark.parametrize("sig", ["abc", "!!!!", "AAA=A", "é" * 4, "%ZZ", "QUJD%"])
def test_non_base64_signature_is_refused(sig: str) -> None:
    with pytest.raises(InvalidToken, match="signature is not base64"):
        parse_token(header(("sr", "localhost"), ("sig", sig), ("se", "1")))


@pytest.mark.parametrize("se", ["abc", "-5", "+5", "1.5", "1e9", " 1", "9" * 13, "²", "١٢"])
def test_non_numeric_expiry_is_refused(se: str) -> None:
    with pytest.raises(InvalidToken, match="expiry"):
        parse_token(header(("sr", "localhost"), ("sig", SIG), ("se", se)))


def test_signature_is_url_decoded_before_base64() -> None:
    raw = signature_of("localhost")
    assert any(character in raw for character in "+/=")  # the test means something
    encoded = parse_token(header(("sr", "localhost"), ("sig", quote(raw, safe="")), ("se", "1")))
    lower_escapes = re.sub("%[0-9A-F]{2}", lambda match: match[0].lower(), quote(raw, safe=""))
    lower = parse_token(header(("sr", "localhost"), ("sig", lower_escapes), ("se", "1")))
    assert encoded.signature == lower.signature == base64.b64decode(raw)


def test_signed_by_the_right_key_only() -> None:
    token = parse_token(make_token("localhost", "owner", KEY, EXPIRY))
    assert signed_by(token, KEY)
    assert not signed_by(token, OTHER_KEY)


def test_signature_covers_the_expiry() -> None:
    text = make_token("localhost", "owner", KEY, EXPIRY).replace(str(EXPIRY), str(EXPIRY + 1))
    assert not signed_by(parse_token(text), KEY)


@pytest.mark.parametrize(
    "resource",
    [
        "0ne00000001/registrations/dev-1",  # Node: sr as is
        "0ne00000001%2Fregistrations%2Fdev-1",  # .NET, Python
        "0ne00000001%2fregistrations%2fdev-1",  # C: lowercase escapes
    ],
)
def test_each_sr_is_verified_over_the_text_as_sent(resource: str) -> None:
    token = parse_token(
        header(
            ("sr", resource), ("sig", quote(signature_of(resource), safe="")), ("se", f"{EXPIRY}")
        )
    )
    assert token.resource == resource
    assert token.audience == "0ne00000001/registrations/dev-1"
    assert signed_by(token, KEY)


def test_signature_over_another_encoding_of_sr_does_not_verify() -> None:
    raw = "0ne00000001/registrations/dev-1"
    encoded = quote(raw, safe="")
    signed_raw_sent_encoded = parse_token(
        header(("sr", encoded), ("sig", quote(signature_of(raw), safe="")), ("se", f"{EXPIRY}"))
    )
    signed_encoded_sent_raw = parse_token(
        header(("sr", raw), ("sig", quote(signature_of(encoded), safe="")), ("se", f"{EXPIRY}"))
    )
    assert not signed_by(signed_raw_sent_encoded, KEY)
    assert not signed_by(signed_encoded_sent_raw, KEY)


def test_make_token_url_encodes_sr_and_signs_it() -> None:
    text = make_token("localhost/a", None, KEY, EXPIRY)
    token = parse_token(text)
    assert token.resource == "localhost%2Fa"
    assert token.key_name is None
    assert token.signature == sign("localhost%2Fa", EXPIRY, KEY)
    assert "&skn=" not in text


@pytest.mark.parametrize(
    ("audience", "host"),
    [
        ("localhost", "localhost"),
        ("https://localhost:8443/", "localhost"),
        ("localhost:8443", "localhost"),
        ("LOCALHOST", "localhost"),
        ("mydps.azure-devices-provisioning.net", "mydps.azure-devices-provisioning.net"),
        ("MyDps.Azure-Devices-Provisioning.net/path", "mydps.azure-devices-provisioning.net"),
        ("https://[::1]:8443/", "::1"),
        ("", ""),
        ("http://[::1", ""),  # unparseable
    ],
)
def test_audience_host(audience: str, host: str) -> None:
    assert audience_host(audience) == host


@FAST
@given(st.text())
def test_audience_host_never_raises(audience: str) -> None:
    assert audience_host(audience) == audience_host(audience).lower()


def test_format_rights() -> None:
    rights = AccessRights.ENROLLMENT_READ | AccessRights.ENROLLMENT_WRITE
    assert format_rights(rights) == "EnrollmentRead, EnrollmentWrite"
    assert format_rights(AccessRights(0)) == ""
    assert format_rights(ALL_RIGHTS).split(", ") == list(RIGHT_NAMES.values())


def test_parse_rights_is_lenient_about_case_and_spaces() -> None:
    assert parse_rights(" enrollmentread ,ENROLLMENTWRITE,, ") == (
        AccessRights.ENROLLMENT_READ | AccessRights.ENROLLMENT_WRITE
    )
    assert parse_rights("") == AccessRights(0)


@pytest.mark.parametrize("text", ["Everything", "EnrollmentRead, Admin", "Enrollment Read"])
def test_unknown_right_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unknown access right"):
        parse_rights(text)


@FAST
@given(st.sets(st.sampled_from(list(RIGHT_NAMES))))
def test_rights_round_trip(chosen: set[AccessRights]) -> None:
    rights = AccessRights(0)
    for right in chosen:
        rights |= right
    assert parse_rights(format_rights(rights)) == rights


def test_policy_signing_keys_are_decoded() -> None:
    policy = SharedAccessPolicy(
        name="owner",
        primary_key=base64.b64encode(KEY).decode(),
        secondary_key=base64.b64encode(OTHER_KEY).decode(),
        rights=ALL_RIGHTS,
    )
    assert policy.signing_keys() == (KEY, OTHER_KEY)


token_parts = st.tuples(
    st.sampled_from(["sr", "sig", "se", "skn", "SR", "x", ""]),
    st.sampled_from(["=", "", "=="]),
    st.sampled_from(["localhost", SIG, str(EXPIRY), "owner", "%", "²", "-1", "é"]) | st.text(),
)


@FAST
@given(
    st.text()
    | st.text().map(lambda text: "SharedAccessSignature " + text)
    | st.lists(token_parts, max_size=6).map(
        lambda parts: "SharedAccessSignature " + "&".join("".join(part) for part in parts)
    )
)
def test_parse_token_raises_only_invalid_token(text: str) -> None:
    try:
        token = parse_token(text)
    except InvalidToken:
        return
    assert token.resource
    assert token.expiry >= 0
