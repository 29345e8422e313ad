"""The device registration API over HTTPS: register, poll the operation, look up the state.

Devices authenticate per request (a SAS token in ``Authorization``, or a TLS client
certificate the listener hands over in the ASGI TLS extension); the use cases check it.
"""

from __future__ import annotations

import base64

from dpsd.domain.device_auth import DEVICE_KEY_NAME
from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.domain.tpm_public import TpmKeys
from dpsd.http.bodies import read_optional_json
from dpsd.http.exchange import HttpRequest, HttpResponse, json_response
from dpsd.http.routing import Route
from dpsd.service.device_registration import Credential, DeviceRegistrationService
from dpsd.wire import (
    DeviceRegistrationResultWire,
    DeviceRegistrationWire,
    RegistrationOperationStatusWire,
    TpmChallengeWire,
    result_to_wire,
    tpm_keys,
)

TPM_CHALLENGE_MESSAGE = (
    "Open the authenticationKey with the device's TPM and send the request again, signed "
    "with the key it holds"
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
        credential = _credential(request)
        keys = tpm_keys(body)
        if keys is not None and credential == Credential():
            return await self._challenge(params, keys)
        operation = await self._service.register(
            params["scope"],
            params["id"],
            credential,
            body_registration_id=body.registration_id,
            payload=body.payload,
            tpm=keys,
        )
        answer = RegistrationOperationStatusWire(operation.operation_id, "assigning")
        return json_response(answer, 202, {"retry-after": self._retry_after})

    async def _challenge(self, params: dict[str, str], keys: TpmKeys) -> HttpResponse:
        """A TPM device without a credential yet: 401 with the blob it must open."""
        blob = await self._service.tpm_challenge(params["scope"], params["id"], keys)
        answer = TpmChallengeWire(
            authentication_key=base64.b64encode(blob).decode("ascii"),
            key_name=DEVICE_KEY_NAME,
            message=TPM_CHALLENGE_MESSAGE,
        )
        return json_response(answer, 401)

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
            result_to_wire(state, operation.attestation_type, operation.authentication_key),
        )
