"""Identifiers of the DPS API: registration ids, enrollment group ids, ID scopes."""

from __future__ import annotations

import re

from dpsd.domain.errors import InvalidRegistrationId

MAX_ID_LENGTH = 128
_ID_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-._:]*[A-Za-z0-9])?")


def validate_registration_id(value: str, *, what: str = "registrationId") -> str:
    """Return ``value`` if it is a valid DPS id, else raise InvalidRegistrationId.

    DPS ids are at most 128 characters of ASCII letters, digits and ``- . _ :``, and start
    and end with a letter or digit.
    """
    if not value:
        raise InvalidRegistrationId(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRegistrationId(
            f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidRegistrationId(
            f"{what} {value!r} is invalid: use letters, digits and '-', '.', '_', ':', "
            "starting and ending with a letter or digit"
        )
    return value


def id_key(value: str) -> str:
    """The case-insensitive key under which an id is stored and looked up."""
    return value.lower()


def format_id_scope(suffix: bytes) -> str:
    """An ID scope in the DPS format: ``0ne`` followed by eight hex digits."""
    if len(suffix) != 4:
        raise ValueError("an ID scope takes exactly four random bytes")
    return "0ne" + suffix.hex().upper()
