"""Rules on enrollment settings that span fields, and device ids."""

from __future__ import annotations

import pytest

from dpsd.domain.attestation import AttestationMechanism, AttestationType
from dpsd.domain.enrollment import (
    AllocationPolicy,
    CustomAllocationDefinition,
    EnrollmentSettings,
    check_device_id,
    check_settings,
)
from dpsd.domain.errors import ValidationError

NONE = AttestationMechanism(AttestationType.NONE)
WEBHOOK = CustomAllocationDefinition("https://example.com/api/allocate?code=x", "2021-10-01")


def settings(**changes: object) -> EnrollmentSettings:
    return EnrollmentSettings(attestation=NONE, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "valid",
    [
        settings(),
        settings(allocation_policy=AllocationPolicy.HASHED, iot_hubs=("a.example", "b.example")),
        settings(allocation_policy=AllocationPolicy.STATIC, iot_hubs=("a.example",)),
        settings(allocation_policy=AllocationPolicy.CUSTOM, custom_allocation_definition=WEBHOOK),
        settings(iot_hubs=()),
    ],
)
def test_valid_settings(valid: EnrollmentSettings) -> None:
    check_settings(valid)


@pytest.mark.parametrize(
    ("invalid", "message"),
    [
        (settings(allocation_policy=AllocationPolicy.CUSTOM), "needs a customAllocationDefinition"),
        (
            settings(
                custom_allocation_definition=CustomAllocationDefinition("ftp://x", "2021-10-01")
            ),
            "webhookUrl",
        ),
        (
            settings(custom_allocation_definition=CustomAllocationDefinition("https://x", "v1")),
            "apiVersion 'v1'",
        ),
        (
            settings(allocation_policy=AllocationPolicy.STATIC, iot_hubs=("a.example", "b")),
            "exactly one IoT hub",
        ),
        (settings(iot_hubs=("a b",)), "not a host name"),
        (settings(iot_hubs=("",)), "not a host name"),
        (settings(iot_hubs=("a" * 256,)), "not a host name"),
    ],
)
def test_invalid_settings(invalid: EnrollmentSettings, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_settings(invalid)


@pytest.mark.parametrize(
    "device_id", ["d", "Dev-1", "a:b.c+d%e_f#g*h?i!j(k)l,m=n@o$p'q", "x" * 128]
)
def test_valid_device_ids(device_id: str) -> None:
    check_device_id(device_id)


@pytest.mark.parametrize("device_id", ["", "a b", "a/b", "dév", "x" * 129, "a\n"])
def test_invalid_device_ids(device_id: str) -> None:
    with pytest.raises(ValidationError, match="deviceId"):
        check_device_id(device_id)
