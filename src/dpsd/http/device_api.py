"""The device registration API over HTTPS: register, poll the operation, look up the state.

Devices authenticate per request (a SAS token in ``Authorization``); the use cases check it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from dpsd.domain.attestation import AttestationType
from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.domain.timestamps import format_timestamp
from dpsd.http.app import json_response
from dpsd.http.routing import Route
from dpsd.http.service_api import read_optional_json
from dpsd.service.device_registration import Credential, DeviceRegistrationService


class _Wire(msgspec.Struct, rename="camel", omit_defaults=True):
    pass


class TpmWire(_Wire):
    endorsement_key: str | None = None
    storage_root_key: str | None = None


class DeviceRegistrationWire(_Wire):
    registration_id: str | None = None
    tpm: TpmWire | None = None
    payload: Any = None


class GroupReferenceWire(_Wire):
    enrollment_group_id: str | None = None


class DeviceRegistrationResultWire(_Wire):
    symmetric_key: GroupReferenceWire | None = None
    x509: GroupReferenceWire | None = None
    registration_id: str | None = None
    created_date_time_utc: str | None = None
    assigned_hub: str | None = None
    device_id: str | None = None
    status: str | None = None
    substatus: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    last_updated_date_time_utc: str | None = None
    etag: str | None = None
    payload: Any = None


class RegistrationOperationStatusWire(_Wire):
    operation_id: str
    status: str
    registration_state: DeviceRegistrationResultWire | None = None


def result_to_wire(
    state: DeviceRegistrationState, attestation_type: str | None
) -> DeviceRegistrationResultWire:
    group = (
        None if state.enrollment_group_id is None else GroupReferenceWire(state.enrollment_group_id)
    )
    return DeviceRegistrationResultWire(
        symmetric_key=group if attestation_type == AttestationType.SYMMETRIC_KEY.value else None,
        x509=group if attestation_type == AttestationType.X509.value else None,
        registration_id=state.registration_id,
        created_date_time_utc=format_timestamp(state.created),
        assigned_hub=state.assigned_hub,
        device_id=state.device_id,
        status=state.status.value,
        substatus=None if state.substatus is None else state.substatus.value,
        error_code=state.error_code,
        error_message=state.error_message,
        last_updated_date_time_utc=format_timestamp(state.last_updated),
        etag=state.etag,
        payload=state.payload,
    )


def _credential(request: Request) -> Credential:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tuple(tls.get("client_cert_chain") or ())
    return Credential(authorization=request.headers.get("authorization"), client_chain=chain)


class DeviceHandlers:
    def __init__(self, service: DeviceRegistrationService, retry_after: int) -> None:
        self._service = service
        self._retry_after = str(retry_after)

    def routes(self) -> list[Route]:
        return [
            Route("PUT", ("{scope}", "registrations", "{id}", "register"), self.register, None),
            Route(
                "GET",
                ("{scope}", "registrations", "{id}", "operations", "{operation}"),
                self.operation,
                None,
            ),
            Route("POST", ("{scope}", "registrations", "{id}"), self.status_lookup, None),
        ]

    async def register(self, request: Request, params: dict[str, str]) -> Response:
        body = await read_optional_json(request, DeviceRegistrationWire) or DeviceRegistrationWire()
        operation = await self._service.register(
            params["scope"],
            params["id"],
            _credential(request),
            body_registration_id=body.registration_id,
            payload=body.payload,
            tpm=body.tpm,
        )
        answer = RegistrationOperationStatusWire(operation.operation_id, "assigning")
        return json_response(answer, 202, {"retry-after": self._retry_after})

    async def operation(self, request: Request, params: dict[str, str]) -> Response:
        operation = await self._service.operation(
            params["scope"], params["id"], params["operation"], _credential(request)
        )
        if operation.finished and operation.state is not None:
            return json_response(self._status(operation, operation.state))
        pending = RegistrationOperationStatusWire(
            operation.operation_id,
            "assigning",
            DeviceRegistrationResultWire(
                registration_id=operation.registration_id, status="assigning"
            ),
        )
        return json_response(pending, 202, {"retry-after": self._retry_after})

    async def status_lookup(self, request: Request, params: dict[str, str]) -> Response:
        await read_optional_json(request, DeviceRegistrationWire)
        state = await self._service.registration_state(
            params["scope"], params["id"], _credential(request)
        )
        return json_response(result_to_wire(state, None))

    def _status(
        self, operation: RegistrationOperation, state: DeviceRegistrationState
    ) -> RegistrationOperationStatusWire:
        return RegistrationOperationStatusWire(
            operation.operation_id,
            operation.status.value,
            result_to_wire(state, operation.attestation_type),
        )
