"""A device's register and poll requests, answered on any device protocol: the use cases of
``DeviceRegistrationService`` called as the HTTPS device API calls them, their results and
errors rendered as the same DPS bodies with the HTTP status they would have there (the MQTT
edge puts it in the response topic, the AMQP edge in a message or a rejected outcome).

Each request is served under a tracking id of its own, which its error body carries and
every log line about it names; a request that fails is logged on ``dpsd.devices``
(``request_failed``: a server error with its traceback)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from dpsd.domain.errors import DomainError
from dpsd.domain.json_depth import JsonTooDeep
from dpsd.domain.registration import RegistrationOperation
from dpsd.domain.timestamps import format_timestamp
from dpsd.domain.tpm_public import TpmKeys
from dpsd.json_decoding import decode_json
from dpsd.service.device_events import DeviceProtocol
from dpsd.service.device_registration import (
    Attested,
    Credential,
    DeviceRegistrationService,
    OperationNotFound,
)
from dpsd.service.errors import (
    DeviceUnauthorized,
    EnrollmentNotFound,
    ServiceError,
    StorageUnavailable,
    Throttled,
)
from dpsd.telemetry.tracking import current_tracking_id, tracking
from dpsd.wire import (
    DeviceRegistrationResultWire,
    DeviceRegistrationWire,
    ErrorDetailsWire,
    RegistrationOperationStatusWire,
    result_to_wire,
    tpm_keys,
)

logger = logging.getLogger("dpsd.devices")
UNAUTHORIZED = 401002
THROTTLED = 429001
_encoder = msgspec.json.Encoder()
_ERRORS: dict[type[Exception], tuple[int, int]] = {
    DeviceUnauthorized: (401, UNAUTHORIZED),
    OperationNotFound: (404, 404205),
    EnrollmentNotFound: (404, 404201),
    JsonTooDeep: (400, 400006),
    StorageUnavailable: (503, 503000),
    Throttled: (429, THROTTLED),
    DomainError: (400, 400004),
    ServiceError: (400, 400004),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """``status`` as the HTTPS device API would send it; ``body`` the DPS JSON;
    ``settled``: the operation a register settled within the request, for the connection's
    poll of it (``DeviceRequests.poll``)."""

    status: int
    body: bytes
    retry_after: int | None = None
    settled: RegistrationOperation | None = None


@dataclass(frozen=True, slots=True)
class ConnectedDevice:
    """Who a connection's device proved to be when it connected, and how (``attested``,
    once it did)."""

    id_scope: str
    registration_id: str
    credential: Credential
    attested: Attested | None = None


class DeviceRequests:
    """Register and poll for devices attested when their connection opened."""

    def __init__(
        self,
        service: DeviceRegistrationService,
        retry_after: int,
        now: Callable[[], datetime],
        *,
        protocol: DeviceProtocol,
    ) -> None:
        self.service = service
        self.protocol = protocol
        self._retry_after = retry_after
        self._now = now

    async def attest(self, device: ConnectedDevice) -> ConnectedDevice | Answer:
        """The device with the enrollment its credential proves (its register requests
        start from it), else the error answer, logged under the tracking id it carries (by
        the use case when the credential failed)."""
        with tracking():
            try:
                attested = await self.service.admit(
                    device.id_scope, device.registration_id, device.credential, self.protocol
                )
            except (DomainError, ServiceError) as error:
                if not isinstance(error, DeviceUnauthorized):
                    self._log_refused(device.registration_id, error.message)
                return self.error(error)
        return ConnectedDevice(device.id_scope, device.registration_id, device.credential, attested)

    async def tpm_challenge(
        self, id_scope: str, registration_id: str, keys: TpmKeys
    ) -> bytes | Answer:
        """The activation blob for a TPM device, or the error answer (logged as for
        ``attest``)."""
        with tracking():
            try:
                return await self.service.tpm_challenge(
                    id_scope, registration_id, keys, self.protocol
                )
            except (DomainError, ServiceError) as error:
                if not isinstance(error, DeviceUnauthorized):
                    self._log_refused(registration_id, error.message)
                return self.error(error)

    def refuse(self, reason: str, registration_id: str | None = None) -> Answer:
        """Refuse a connection that does not name a device as the protocol asks (before
        any attestation): logged, and the 401 answer under the same tracking id."""
        with tracking():
            self._log_refused(registration_id, reason)
            return self.error(DeviceUnauthorized(reason))

    def _log_refused(self, registration_id: str | None, reason: str) -> None:
        logger.info(
            "%(protocol)s connection refused: %(reason)s",
            {
                "event": "connect_refused",
                "protocol": self.protocol.value,
                "registration_id": registration_id,
                "reason": reason,
            },
        )

    async def register(self, device: ConnectedDevice, payload: bytes) -> Answer:
        """``payload``: the device registration JSON, or nothing."""
        with tracking():
            try:
                return await self._register(device, payload)
            except Exception as error:  # noqa: BLE001 - every failure becomes a DPS error answer
                return self._failed("register", device, error)

    async def poll(
        self,
        device: ConnectedDevice,
        operation_id: str,
        settled: RegistrationOperation | None = None,
    ) -> Answer:
        """``settled``: what the device's register on this connection answered."""
        with tracking():
            try:
                return await self._poll(device, operation_id, settled)
            except Exception as error:  # noqa: BLE001 - every failure becomes a DPS error answer
                return self._failed("poll", device, error)

    def poll_settled(
        self, device: ConnectedDevice, operation_id: str, settled: RegistrationOperation
    ) -> Answer | None:
        """The answer to a poll of ``settled`` (what the device's register on this
        connection settled) without waiting for anything; None: a poll of another
        operation, for ``poll``."""
        with tracking():
            try:
                operation = self.service.poll_settled(
                    device.registration_id, operation_id, settled, self.protocol
                )
            except Exception as error:  # noqa: BLE001 - every failure becomes a DPS error answer
                return self._failed("poll", device, error)
            return None if operation is None else self._status(operation)

    def error(self, error: Exception) -> Answer:
        """The DPS error body of ``error``, under the tracking id of the request being
        served; failures of dpsd itself are 500 without detail, and a store that cannot
        serve now is 503 and a throttled request 429, each with when to retry."""
        status, code = _status_and_code(error)
        message = None if _unexpected(error, status) else getattr(error, "message", None)
        body = ErrorDetailsWire(
            error_code=code,
            tracking_id=current_tracking_id(),
            message=message or "The service failed to handle the request",
            timestamp_utc=format_timestamp(self._now()),
            info={},
        )
        return Answer(status, _encoder.encode(body), _retry_after(error))

    def _failed(self, request: str, device: ConnectedDevice, error: Exception) -> Answer:
        if isinstance(error, Throttled):  # the use case reported it
            return self.error(error)
        status, code = _status_and_code(error)
        facts = {
            "event": "request_failed",
            "protocol": self.protocol.value,
            "request": request,
            "registration_id": device.registration_id,
            "status": status,
            "error_code": code,
            "reason": getattr(error, "message", None),
        }
        if _unexpected(error, status):
            template = "%(protocol)s %(request)s of device %(registration_id)s failed"
            logger.error(template, facts, exc_info=error)
        else:
            template = "%(protocol)s %(request)s of device %(registration_id)s failed: %(reason)s"
            logger.info(template, facts)
        return self.error(error)

    async def _register(self, device: ConnectedDevice, payload: bytes) -> Answer:
        body = DeviceRegistrationWire()
        if payload.strip():
            try:
                body = decode_json(payload, DeviceRegistrationWire)
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
            tpm=tpm_keys(body),
            protocol=self.protocol,
            connection=device.attested,
        )
        answer = RegistrationOperationStatusWire(operation.operation_id, "assigning")
        settled = operation if operation.finished else None
        return Answer(202, _encoder.encode(answer), self._retry_after, settled)

    async def _poll(
        self, device: ConnectedDevice, operation_id: str, settled: RegistrationOperation | None
    ) -> Answer:
        operation = await self.service.operation(
            device.id_scope,
            device.registration_id,
            operation_id,
            device.credential,
            connection_attested=True,
            protocol=self.protocol,
            settled=settled,
        )
        return self._status(operation)

    def _status(self, operation: RegistrationOperation) -> Answer:
        """A poll's answer: the outcome of a finished operation, else still assigning."""
        if operation.finished and operation.state is not None:
            result = result_to_wire(
                operation.state, operation.attestation_type, operation.authentication_key
            )
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


def _status_and_code(error: Exception) -> tuple[int, int]:
    """The HTTP status and DPS error code of ``error``; 500 for failures of dpsd itself."""
    return next((_ERRORS[cls] for cls in type(error).__mro__ if cls in _ERRORS), (500, 500000))


def _unexpected(error: Exception, status: int) -> bool:
    """A failure of dpsd itself (logged with its traceback, its cause kept from the device),
    as opposed to a store that cannot serve now (logged where its fault is found)."""
    return status >= 500 and not isinstance(error, StorageUnavailable)


def _retry_after(error: Exception) -> int | None:
    """When a device may try again after ``error``: a store that cannot serve now, a
    throttled request."""
    if isinstance(error, StorageUnavailable | Throttled):
        return error.retry_after
    return None
