"""Timestamps in the wire format of DPS: UTC with seven fractional digits."""

from __future__ import annotations

from datetime import UTC, datetime


def format_timestamp(moment: datetime) -> str:
    """``2022-07-05T21:27:16.8123230Z``: .NET's round-trip format, as the real service writes."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "0Z")


def format_certificate_time(moment: datetime) -> str:
    """``2017-11-14T12:34:18Z``: whole seconds, as in X509CertificateInfo."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
