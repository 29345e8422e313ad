"""What an MQTT device's packets mean to the registration use cases, and how the answers and
errors travel back (the same DPS bodies as over HTTPS, the status in the topic)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from dpsd.domain.errors import DomainError
from dpsd.domain.timestamps import format_timestamp
from dpsd.mqtt.codec import Connect, ConnectReturnCode
from dpsd.mqtt.topics import DeviceRequest, RegisterRequest
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

_encoder = msgspec.json.Encoder()
_ERRORS: dict[type[Exception], tuple[int, int]] = {
    DeviceUnauthorized: (401, 401002),
    OperationNotFound: (404, 404205),
    UnsupportedAttestation: (400, 400004),
    DomainError: (400, 400004),
    ServiceError: (400, 400004),
}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: int | None = None


def parse_username(username: str) -> tuple[str, str]:
    """``{idScope}/registrations/{registrationId}/api-version=...&ClientVersion=...``."""
    scope, marker, rest = username.partition("/registrations/")
    registration_id = rest.split("/", 1)[0]
    if not marker or not scope or not registration_id:
        raise ValueError("the user name is not {idScope}/registrations/{registrationId}/...")
    return scope, registration_id


class DeviceSession:
    """One connected device: who it said it is, and its requests."""

    def __init__(
        self,
        service: DeviceRegistrationService,
        retry_after: int,
        client_chain: tuple[str, ...],
        now: Callable[[], datetime],
    ) -> None:
        self._service = service
        self._retry_after = retry_after
        self._client_chain = client_chain
        self._now = now
        self._scope = ""
        self._registration_id = ""
        self._credential = Credential()

    async def connect(self, packet: Connect) -> ConnectReturnCode | None:
        """None accepts the device; a code refuses it."""
        try:
            self._scope, self._registration_id = parse_username(packet.username or "")
        except ValueError:
            return ConnectReturnCode.BAD_USERNAME_OR_PASSWORD
        if packet.client_id.lower() != self._registration_id.lower():
            return ConnectReturnCode.IDENTIFIER_REJECTED
        password = packet.password.decode("utf-8", errors="replace") if packet.password else None
        self._credential = Credential(authorization=password, client_chain=self._client_chain)
        try:
            await self._service.attest(self._scope, self._registration_id, self._credential)
        except DeviceUnauthorized:
            return ConnectReturnCode.NOT_AUTHORIZED
        except (DomainError, ServiceError):
            return ConnectReturnCode.BAD_USERNAME_OR_PASSWORD
        return None

    async def request(self, request: DeviceRequest, payload: bytes) -> Answer:
        try:
            if isinstance(request, RegisterRequest):
                return await self._register(payload)
            return await self._poll(request.operation_id)
        except Exception as error:  # noqa: BLE001 - every failure becomes a DPS error answer
            return self._error(error)

    async def _register(self, payload: bytes) -> Answer:
        body = DeviceRegistrationWire()
        if payload.strip():
            try:
                body = msgspec.json.decode(payload, type=DeviceRegistrationWire)
            except msgspec.DecodeError as error:
                raise DomainError(
                    f"The request body is not a device registration: {error}"
                ) from error
        operation = await self._service.register(
            self._scope,
            self._registration_id,
            self._credential,
            body_registration_id=body.registration_id,
            payload=body.payload,
            tpm=body.tpm,
        )
        answer = RegistrationOperationStatusWire(operation.operation_id, "assigning")
        return Answer(202, _encoder.encode(answer), self._retry_after)

    async def _poll(self, operation_id: str) -> Answer:
        operation = await self._service.operation(
            self._scope,
            self._registration_id,
            operation_id,
            self._credential,
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

    def _error(self, error: Exception) -> Answer:
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
