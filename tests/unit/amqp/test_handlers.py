"""Link addresses as the SDKs write them."""

from __future__ import annotations

import pytest

from dpsd.amqp.handlers import registration_address


@pytest.mark.parametrize(
    ("address", "named"),
    [
        ("0ne00000001/registrations/dev-1", ("0ne00000001", "dev-1")),
        ("amqps://dps.example/0ne00000001/registrations/dev-1", ("0ne00000001", "dev-1")),
        ("amqps://127.0.0.1:5671/0ne00000001/registrations/Dev-1", ("0ne00000001", "Dev-1")),
        (None, None),
        ("", None),
        ("remote_endpoint", None),
        ("0ne00000001/registrations/", None),
        ("/registrations/dev-1", None),
        ("0ne00000001/devices/dev-1", None),
        ("0ne00000001/registrations/dev-1/extra", None),
        ("amqps://dps.example", None),
    ],
)
def test_registration_addresses(address: str | None, named: tuple[str, str] | None) -> None:
    assert registration_address(address) == named
