"""The settings object refuses values dpsd cannot serve with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from dpsd.cli.options import make_settings
from dpsd.service.throttling import Rate, ThrottleLimits
from dpsd.settings import (
    DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT,
    Settings,
    default_hostname,
    hostname_warning,
)


@pytest.mark.parametrize("field", ["webhook_timeout", "hub_timeout"])
@pytest.mark.parametrize("seconds", [0.0, -1.0, 121.0])
def test_timeouts_out_of_range_are_refused(field: str, seconds: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout must be"):
        Settings(data_dir=tmp_path, **{field: seconds})  # type: ignore[arg-type]


def test_timeouts_in_range_are_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, webhook_timeout=2.5, hub_timeout=30)
    assert (settings.webhook_timeout, settings.hub_timeout) == (2.5, 30)


def test_load_limits_default_to_a_cap_on_registrations_in_flight_only(tmp_path: Path) -> None:
    limits = Settings(data_dir=tmp_path).throttle_limits
    assert limits == ThrottleLimits(max_in_flight=DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT)


def test_serve_options_read_rates_and_turn_limits_off(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        None,
        retry_after=4,
        max_registrations_in_flight=0,
        registration_rate="1000/60",
        device_poll_rate="5/10s",
    )
    assert settings.throttle_limits == ThrottleLimits(None, Rate(1000, 60), Rate(5, 10), 4)
    off = make_settings(tmp_path, None, registration_rate="off", device_poll_rate="0")
    assert (off.registration_rate, off.device_poll_rate) == (None, None)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_registrations_in_flight": -1},
        {"registration_rate": "fast"},
        {"device_poll_rate": "5/0"},
    ],
)
def test_serve_options_refuse_limits_dpsd_cannot_apply(
    limits: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(typer.BadParameter):
        make_settings(tmp_path, None, **limits)


@pytest.mark.parametrize(
    ("host", "hostname"),
    [
        ("127.0.0.1", "localhost"),
        ("::1", "localhost"),
        ("0.0.0.0", "localhost"),
        ("::", "localhost"),
        ("localhost", "localhost"),
        ("127.0.0.110", "127.0.0.110"),  # loopback, but not where localhost goes
        ("192.0.2.7", "192.0.2.7"),
        ("dps.example.net", "dps.example.net"),
        ("fd00::7", "localhost"),  # a connection string cannot carry it with a port: warned
    ],
)
def test_without_a_hostname_clients_are_told_what_reaches_the_listener(
    host: str, hostname: str
) -> None:
    assert default_hostname(host) == hostname


def test_a_listener_localhost_does_not_reach_is_warned_of_unless_named() -> None:
    warning = hostname_warning("fd00::7", default_hostname("fd00::7"))
    assert warning is not None
    assert "fd00::7" in warning
    assert "--hostname" in warning
    assert hostname_warning("fd00::7", "dps.example.net") is None
    assert hostname_warning("127.0.0.110", default_hostname("127.0.0.110")) is None
    assert hostname_warning("0.0.0.0", "localhost") is None


def test_a_hostname_given_is_kept_whatever_the_host(tmp_path: Path) -> None:
    named = make_settings(tmp_path, None, host="127.0.0.110", hostname="dps.example.net")
    assert named.hostname == "dps.example.net"
    unnamed = make_settings(tmp_path, None, host="127.0.0.110")
    assert unnamed.hostname == "127.0.0.110"
    assert "127.0.0.110" in unnamed.certificate_names


def test_the_loop_delay_bound_defaults_to_two_seconds_and_zero_turns_it_off(
    tmp_path: Path,
) -> None:
    assert Settings(data_dir=tmp_path).max_loop_delay == 2.0
    assert make_settings(tmp_path, None, max_loop_delay=0).max_loop_delay is None
    assert make_settings(tmp_path, None, max_loop_delay=0.5).max_loop_delay == 0.5
    with pytest.raises(typer.BadParameter, match="loop delay"):
        make_settings(tmp_path, None, max_loop_delay=-1)
