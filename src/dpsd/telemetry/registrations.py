"""Device registration events as log lines and metrics: what the use cases report through
their port (``dpsd.service.device_events``), plugged in by the composition root.

One line per event on the ``dpsd.devices`` logger, with an ``event`` fact for machines:
``refused`` (the credential proved no enrollment), ``throttled`` (a load limit refused a
request: which, and the retry-after the device was told), ``registering`` (only when the
register request is answered before the registration ends: custom allocation, a slow hub),
then ``assigned`` (hub, device id, allocation policy), ``failed`` (error code and message),
``disabled`` or ``error`` (dpsd itself failed to finish the registration), each with the
operation, the attestation and the enrollment group. The lines carry the tracking id of
the request that started the registration, also when it ends in the background.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dpsd.domain.registration import RegistrationStatus
from dpsd.service.device_events import (
    DeviceRefused,
    DeviceThrottled,
    RegistrationFinished,
    RegistrationStarted,
)

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics

logger = logging.getLogger("dpsd.devices")
ERROR_OUTCOME = "error"


class ReportedRegistrations:
    """Logs each event, and counts it when there are ``metrics``."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def refused(self, event: DeviceRefused) -> None:
        logger.info(
            "%(protocol)s device %(registration_id)s refused: %(reason)s",
            {
                "event": "refused",
                "protocol": event.protocol.value,
                "registration_id": event.registration_id,
                "attestation": event.attestation,
                "reason": event.reason,
            },
        )
        if self._metrics is not None:
            self._metrics.registration(event.protocol.value, event.attestation, "refused")

    def throttled(self, event: DeviceThrottled) -> None:
        logger.info(
            "%(protocol)s %(request)s of device %(registration_id)s throttled (%(limit)s): "
            "retry after %(retry_after)s s",
            {
                "event": "throttled",
                "protocol": event.protocol.value,
                "registration_id": event.registration_id,
                "request": event.request,
                "limit": event.limit,
                "retry_after": event.retry_after,
            },
        )
        if self._metrics is not None:
            self._metrics.throttled(event.protocol.value, event.request, event.limit)

    def started(self, event: RegistrationStarted) -> None:
        operation = event.operation
        logger.info(
            "%(protocol)s device %(registration_id)s registering",
            {
                "event": "registering",
                "protocol": event.protocol.value,
                "registration_id": operation.registration_id,
                "operation_id": operation.operation_id,
                "attestation": operation.attestation_type,
                "enrollment_group_id": operation.enrollment_group_id,
                "allocation_policy": event.allocation_policy,
            },
        )

    def finished(self, event: RegistrationFinished) -> None:
        state = event.state
        outcome = ERROR_OUTCOME if state is None else state.status.value
        facts: dict[str, object] = {
            "event": outcome,
            "protocol": event.protocol.value,
            "registration_id": event.operation.registration_id,
            "operation_id": event.operation.operation_id,
            "attestation": event.operation.attestation_type,
            "enrollment_group_id": event.operation.enrollment_group_id,
            "duration_ms": round(event.seconds * 1000, 1),
        }
        if state is None:
            logger.error(
                "%(protocol)s device %(registration_id)s: dpsd failed to register it", facts
            )
        elif state.status is RegistrationStatus.ASSIGNED:
            facts |= {
                "hub": state.assigned_hub,
                "device_id": state.device_id,
                "allocation_policy": event.allocation_policy,
                "substatus": state.substatus.value if state.substatus else None,
            }
            logger.info("%(protocol)s device %(registration_id)s assigned to %(hub)s", facts)
        else:
            facts |= {"error_code": state.error_code, "reason": state.error_message}
            level = logging.WARNING if state.status is RegistrationStatus.FAILED else logging.INFO
            logger.log(
                level, "%(protocol)s device %(registration_id)s %(event)s: %(reason)s", facts
            )
        if self._metrics is not None:
            attestation = event.operation.attestation_type or "none"
            self._metrics.registration(event.protocol.value, attestation, outcome, event.seconds)
