"""A registration operation settling."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta

from dpsd.domain.registration import (
    DeviceRegistrationState,
    RegistrationOperation,
    RegistrationStatus,
)

STARTED = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SETTLED_AT = STARTED + timedelta(milliseconds=30)


def started() -> RegistrationOperation:
    return RegistrationOperation(
        operation_id="4.0123456789abcdef.00000000-0000-4000-8000-000000000000",
        registration_id="device-1",
        status=RegistrationStatus.ASSIGNING,
        created=STARTED,
        last_updated=STARTED,
        enrollment_group_id="fleet",
        attestation_type="symmetricKey",
    )


def state(status: RegistrationStatus) -> DeviceRegistrationState:
    return DeviceRegistrationState(
        registration_id="device-1",
        status=status,
        etag="etag",
        created=STARTED,
        last_updated=SETTLED_AT,
        assigned_hub="hub.azure-devices.net" if status == RegistrationStatus.ASSIGNED else None,
    )


def test_a_settled_operation_takes_its_states_status_and_keeps_the_rest() -> None:
    for status in (RegistrationStatus.ASSIGNED, RegistrationStatus.FAILED):
        operation = started()
        settled = operation.settled(state(status), SETTLED_AT, authentication_key="blob")
        expected = replace(
            operation,
            status=status,
            state=state(status),
            last_updated=SETTLED_AT,
            authentication_key="blob",
        )
        assert settled == expected
        assert settled.finished


def test_settling_sets_every_field() -> None:
    # A field added to the operation must be carried over by settled() too.
    settled = started().settled(state(RegistrationStatus.ASSIGNED), SETTLED_AT, "blob")
    assert all(getattr(settled, field.name) is not None for field in fields(settled))
