"""The settings object refuses values dpsd cannot serve with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from dpsd.cli.options import make_settings
from dpsd.service.throttling import Rate, ThrottleLimits
from dpsd.settings import DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT, Settings


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
