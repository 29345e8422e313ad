"""Timestamps in the wire format DPS writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from dpsd.domain.timestamps import format_certificate_time, format_timestamp


def test_seven_fractional_digits_and_z() -> None:
    moment = datetime(2022, 7, 5, 21, 27, 16, 812323, tzinfo=UTC)
    assert format_timestamp(moment) == "2022-07-05T21:27:16.8123230Z"


def test_other_zones_are_converted_to_utc() -> None:
    moment = datetime(2022, 7, 5, 23, 27, 16, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2022-07-05T21:27:16.0000000Z"
    assert format_certificate_time(moment) == "2022-07-05T21:27:16Z"


def test_certificate_time_has_whole_seconds() -> None:
    moment = datetime(2017, 11, 14, 12, 34, 18, 999999, tzinfo=UTC)
    assert format_certificate_time(moment) == "2017-11-14T12:34:18Z"
