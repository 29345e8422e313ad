"""Entity tags and the If-Match forms clients send."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.etag import WILDCARD, is_wildcard, new_etag, normalize_if_match
from tests.unit.support import FAST


def test_new_etag_is_base64_of_a_quoted_guid() -> None:
    random16 = bytes(range(16))
    etag = new_etag(random16)
    assert base64.b64decode(etag).decode() == f'"{uuid.UUID(bytes=random16)}"'
    assert new_etag(random16) == etag
    assert new_etag(bytes(16)) != etag


@pytest.mark.parametrize(
    ("header", "meant"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ('W/"abc"', "abc"),
        ('  "abc"  ', "abc"),
        ('""abc""', '"abc"'),  # one layer only
        ('"', '"'),
        ('""', ""),
        ("*", "*"),
        ('"*"', "*"),
    ],
)
def test_normalize_if_match(header: str, meant: str) -> None:
    assert normalize_if_match(header) == meant


@pytest.mark.parametrize("header", ["*", '"*"', " * ", 'W/"*"'])
def test_wildcards(header: str) -> None:
    assert is_wildcard(header)


@pytest.mark.parametrize("header", ["**", "", "abc", '"abc"', "'*'"])
def test_not_wildcards(header: str) -> None:
    assert not is_wildcard(header)


@FAST
@given(st.text())
def test_quoted_and_weak_forms_round_trip(etag: str) -> None:
    assert normalize_if_match(f'"{etag}"') == etag
    assert normalize_if_match(f'W/"{etag}"') == etag


@FAST
@given(st.binary(min_size=16, max_size=16))
def test_generated_etags_round_trip_in_every_form(random16: bytes) -> None:
    etag = new_etag(random16)
    for header in (etag, f'"{etag}"', f'W/"{etag}"', f" {etag} "):
        assert normalize_if_match(header) == etag
    assert etag != WILDCARD
