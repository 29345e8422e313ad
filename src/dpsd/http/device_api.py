"""The device registration API over HTTPS: register, poll the operation, look up the state.

Devices authenticate per request (a SAS token in ``Authorization``, or a TLS client
certificate the listener hands over in the ASGI TLS extension); the use cases check it.
"""

from __future__ import annotations

from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.http.bodies import read_optional_json
from dpsd.http.exchange import HttpRequest, HttpResponse, json_response
from dpsd.http.routing import Route
from dpsd.service.device_registration import Credential, DeviceRegistrationService
from dpsd.wire import (
    DeviceRegistrationResultWire,
    DeviceRegistrationWire,
    RegistrationOperationStatusWire,
    result_to_wire,
)


def _credential(request: HttpRequest) -> Credential:
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

    async def register(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
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

    async def operation(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
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

    async def status_lookup(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
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
