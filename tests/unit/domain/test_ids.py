"""Registration ids, enrollment group ids and ID scopes."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.errors import InvalidRegistrationId, ValidationError
from dpsd.domain.ids import MAX_ID_LENGTH, format_id_scope, id_key, validate_registration_id
from tests.unit.support import FAST

ALNUM = string.ascii_letters + string.digits
SPECIAL = "-._:"


def documented_rule(value: str) -> bool:
    """The rule as the docs put it: 1-128 ASCII letters, digits and ``- . _ :``; the first
    and last character a letter or digit."""
    return (
        1 <= len(value) <= MAX_ID_LENGTH
        and all(character in ALNUM + SPECIAL for character in value)
        and value[0] in ALNUM
        and value[-1] in ALNUM
    )


@pytest.mark.parametrize(
    "value",
    ["a", "7", "device-1", "Dev-1", "a-b.c_d:e", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", "x" * 128],
)
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    assert validate_registration_id(value) == value


def test_128_characters_is_the_limit() -> None:
    assert validate_registration_id("a" * 128) == "a" * 128
    with pytest.raises(InvalidRegistrationId, match="129 characters"):
        validate_registration_id("a" * 129)


def test_empty_id_is_refused() -> None:
    with pytest.raises(InvalidRegistrationId, match="empty"):
        validate_registration_id("")


@pytest.mark.parametrize("special", list(SPECIAL))
def test_special_characters_only_inside(special: str) -> None:
    assert validate_registration_id(f"a{special}b") == f"a{special}b"
    assert validate_registration_id(f"a{special}{special}b") == f"a{special}{special}b"
    for bad in (f"{special}ab", f"ab{special}", special, f"{special}a{special}"):
        with pytest.raises(InvalidRegistrationId):
            validate_registration_id(bad)


@pytest.mark.parametrize(
    "value",
    ["a b", "a/b", "a\\b", "a@b", "a#b", "a+b", "é", "dév", "a\nb", "a\n", " a", "a ", "ab\x00"],
)
def test_other_characters_are_refused(value: str) -> None:
    with pytest.raises(InvalidRegistrationId):
        validate_registration_id(value)


def test_message_names_the_field_and_the_value() -> None:
    with pytest.raises(InvalidRegistrationId, match=r"enrollmentGroupId 'a b' is invalid"):
        validate_registration_id("a b", what="enrollmentGroupId")


def test_invalid_id_is_a_validation_error() -> None:
    assert issubclass(InvalidRegistrationId, ValidationError)


@FAST
@given(
    st.text(max_size=140)
    | st.text(alphabet=ALNUM + SPECIAL + " /é", max_size=140)
    | st.text(alphabet=ALNUM + SPECIAL, min_size=120, max_size=135)
)
def test_accepts_exactly_the_documented_alphabet(value: str) -> None:
    if documented_rule(value):
        assert validate_registration_id(value) == value
    else:
        with pytest.raises(InvalidRegistrationId):
            validate_registration_id(value)


@pytest.mark.parametrize(
    ("value", "key"), [("Dev-1", "dev-1"), ("dev-1", "dev-1"), ("ABC:X_Y.Z", "abc:x_y.z")]
)
def test_id_key_lower_cases(value: str, key: str) -> None:
    assert id_key(value) == key


@FAST
@given(st.text(alphabet=ALNUM + SPECIAL, min_size=1, max_size=20))
def test_id_key_is_case_insensitive(value: str) -> None:
    assert id_key(value) == id_key(value.upper()) == id_key(value.lower())
    assert id_key(id_key(value)) == id_key(value)


def test_format_id_scope() -> None:
    assert format_id_scope(b"\x00\x01\xab\xff") == "0ne0001ABFF"


@FAST
@given(st.binary(min_size=4, max_size=4))
def test_id_scope_is_0ne_and_eight_upper_hex_digits(suffix: bytes) -> None:
    scope = format_id_scope(suffix)
    assert re.fullmatch(r"0ne[0-9A-F]{8}", scope)
    assert bytes.fromhex(scope[3:]) == suffix


@pytest.mark.parametrize("suffix", [b"", b"\x00\x01\x02", b"\x00\x01\x02\x03\x04"])
def test_id_scope_takes_four_bytes(suffix: bytes) -> None:
    with pytest.raises(ValueError, match="four"):
        format_id_scope(suffix)
