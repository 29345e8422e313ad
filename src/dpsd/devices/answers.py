"""A device's register and poll requests, answered on any device protocol: the use cases of
``DeviceRegistrationService`` called as the HTTPS device API calls them, their results and
errors rendered as the same DPS bodies with the HTTP status they would have there (the MQTT
edge puts it in the response topic, the AMQP edge in a message or a rejected outcome)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from dpsd.domain.errors import DomainError
from dpsd.domain.timestamps import format_timestamp
from dpsd.service.device_registration import (
    Credential,
    DeviceRegistrationService,
    DeviceUnauthorized,
    OperationNotFound,
    UnsupportedAttestation,
)
from dpsd.service.errors import ServiceError
from dpsd.wire import (
    DeviceRegistrationResultWire,
    DeviceRegistrationWire,
    ErrorDetailsWire,
    RegistrationOperationStatusWire,
    result_to_wire,
)

UNAUTHORIZED = 401002
_encoder = msgspec.json.Encoder()
_ERRORS: dict[type[Exception], tuple[int, int]] = {
    DeviceUnauthorized: (401, UNAUTHORIZED),
    OperationNotFound: (404, 404205),
    UnsupportedAttestation: (400, 400004),
    DomainError: (400, 400004),
    ServiceError: (400, 400004),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """``status`` as the HTTPS device API would send it; ``body`` the DPS JSON."""

    status: int
    body: bytes
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectedDevice:
    """Who a connection's device proved to be when it connected."""

    id_scope: str
    registration_id: str
    credential: Credential


class DeviceRequests:
    """Register and poll for devices attested when their connection opened."""

    def __init__(
        self, service: DeviceRegistrationService, retry_after: int, now: Callable[[], datetime]
    ) -> None:
        self.service = service
        self._retry_after = retry_after
        self._now = now

    async def attest(self, device: ConnectedDevice) -> Answer | None:
        """None when the credential proves an enrollment, else the error answer."""
        try:
            await self.service.attest(device.id_scope, device.registration_id, device.credential)
        except (DomainError, ServiceError) as error:
            return self.error(error)
        return None

    async def register(self, device: ConnectedDevice, payload: bytes) -> Answer:
        """``payload``: the device registration JSON, or nothing."""
        try:
            return await self._register(device, payload)
        except Exception as error:  # noqa: BLE001 - every failure becomes a DPS error answer
            return self.error(error)

    async def poll(self, device: ConnectedDevice, operation_id: str) -> Answer:
        try:
            return await self._poll(device, operation_id)
        except Exception as error:  # noqa: BLE001 - every failure becomes a DPS error answer
            return self.error(error)

    def error(self, error: Exception) -> Answer:
        """The DPS error body of ``error``; failures of dpsd itself are 500 without detail."""
        status, code = next(
            (_ERRORS[cls] for cls in type(error).__mro__ if cls in _ERRORS), (500, 500000)
        )
        message = getattr(error, "message", None) if status < 500 else None
        body = ErrorDetailsWire(
            error_code=code,
            tracking_id=str(uuid.uuid4()),
            message=message or "The service failed to handle the request",
            timestamp_utc=format_timestamp(self._now()),
            info={},
        )
        return Answer(status, _encoder.encode(body))

    async def _register(self, device: ConnectedDevice, payload: bytes) -> Answer:
        body = DeviceRegistrationWire()
        if payload.strip():
            try:
                body = msgspec.json.decode(payload, type=DeviceRegistrationWire)
            except msgspec.DecodeError as error:
                raise DomainError(
                    f"The request body is not a device registration: {error}"
                ) from error
        operation = await self.service.register(
            device.id_scope,
            device.registration_id,
            device.credential,
            body_registration_id=body.registration_id,
            payload=body.payload,
            tpm=body.tpm,
        )
        answer = RegistrationOperationStatusWire(operation.operation_id, "assigning")
        return Answer(202, _encoder.encode(answer), self._retry_after)

    async def _poll(self, device: ConnectedDevice, operation_id: str) -> Answer:
        operation = await self.service.operation(
            device.id_scope,
            device.registration_id,
            operation_id,
            device.credential,
            connection_attested=True,
        )
        if operation.finished and operation.state is not None:
            result = result_to_wire(operation.state, operation.attestation_type)
            status = RegistrationOperationStatusWire(
                operation.operation_id, operation.status.value, result
            )
            return Answer(200, _encoder.encode(status))
        pending = RegistrationOperationStatusWire(
            operation.operation_id,
            "assigning",
            DeviceRegistrationResultWire(
                registration_id=operation.registration_id, status="assigning"
            ),
        )
        return Answer(202, _encoder.encode(pending), self._retry_after)
