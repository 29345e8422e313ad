"""What an AMQP device's credentials, links and messages mean to the registration use cases,
and how the answers and errors travel back.

- The device proves who it is once, when its connection opens: a SAS token as the SASL
  PLAIN password (user name ``{idScope}/registrations/{registrationId}``), a SAS token signed
  by its TPM at the end of the SASL ``TPM`` exchange (its EK and SRK, then the activation
  blob in two challenges), or, without SASL, its TLS client certificate (the registration id
  is the certificate's CN). Polls then read
  without proving it again, as over MQTT. A device that proves no enrollment is refused at
  OPEN as the real service refuses an unknown certificate: ``com.microsoft:open-error``
  ``amqp:unauthorized-access`` with the DPS error body, then CLOSE with the same error.
- Its links must name it: ``{idScope}/registrations/{registrationId}``, with or without an
  ``amqps://{host}/`` prefix (the C SDK's). Any other address is refused with the DPS error
  body as the detach description.
- Each request message (``iotdps-operation-type`` ``iotdps-register`` or
  ``iotdps-get-operationstatus`` with ``iotdps-operation-id``) is settled ``accepted`` and
  answered with one message: the DPS JSON of the HTTPS device API, the request's
  correlation-id, and ``retry-after`` / ``Retry-After`` as strings (Node and C read the
  first, C# the second). A request that fails is ``rejected`` instead, its error's
  description the DPS error body (C# parses it as JSON), throttling and server errors with
  retry-after in the error's info and the conditions Node retries on.
"""

from __future__ import annotations

import base64
import logging

from dpsd.amqp.connection import (
    AmqpConnection,
    Closed,
    Event,
    OpenRequested,
    SaslEvidenceReceived,
)
from dpsd.amqp.engine import AmqpError, DeliveryId
from dpsd.amqp.links import LinkRequested, RequestReceived
from dpsd.amqp.messages import RequestMessage, ResponseMessage
from dpsd.amqp.sasl import (
    PlainCredentials,
    TpmKeysReceived,
    TpmSegmentTaken,
    TpmToken,
    tpm_segments,
)
from dpsd.devices.answers import Answer, ConnectedDevice, DeviceRequests
from dpsd.domain.errors import DomainError
from dpsd.domain.registration import RegistrationOperation
from dpsd.domain.tpm_public import TpmKeys
from dpsd.domain.x509_attestation import read_chain
from dpsd.service.device_registration import Credential
from dpsd.service.errors import DeviceUnauthorized

logger = logging.getLogger("dpsd.amqp")

OPERATION_TYPE = "iotdps-operation-type"
OPERATION_ID = "iotdps-operation-id"
REGISTER = "iotdps-register"
GET_OPERATION_STATUS = "iotdps-get-operationstatus"
UNAUTHORIZED = "amqp:unauthorized-access"
_CONDITIONS = {
    400: "amqp:invalid-field",
    401: UNAUTHORIZED,
    404: "amqp:not-found",
    429: "com.microsoft:device-container-throttled",
}
_SERVER_ERROR = "amqp:internal-error"


def registration_address(address: str | None) -> tuple[str, str] | None:
    """``(idScope, registrationId)`` of ``{idScope}/registrations/{registrationId}``, also
    behind a ``scheme://host/`` prefix; None for any other address."""
    if not address:
        return None
    if "://" in address:
        address = address.split("://", 1)[1].partition("/")[2]
    parts = address.split("/")
    if len(parts) != 3 or parts[1] != "registrations" or not parts[0] or not parts[2]:
        return None
    return parts[0], parts[2]


class AmqpDeviceSession:
    """One connection's device: who it proved to be, its links and its requests."""

    __slots__ = (
        "_client_chain",
        "_connection",
        "_device",
        "_requests",
        "_retry_after",
        "_sasl_credentials",
        "_settled",
        "_tpm_claim",
        "_tpm_segment",
    )

    def __init__(
        self,
        connection: AmqpConnection,
        requests: DeviceRequests,
        retry_after: int,
        client_chain: tuple[str, ...],
    ) -> None:
        self._connection = connection
        self._requests = requests
        self._retry_after = retry_after
        self._client_chain = client_chain
        self._sasl_credentials: PlainCredentials | None = None
        self._tpm_claim: ConnectedDevice | None = None
        self._tpm_segment = b""
        self._device: ConnectedDevice | None = None
        # The operation the last register settled, until the device polls it.
        self._settled: RegistrationOperation | None = None

    @property
    def device(self) -> ConnectedDevice | None:
        """The device, once it proved who it is."""
        return self._device

    async def handle(self, event: Event) -> list[Event]:
        """Act on one event of the connection; the events a decision released."""
        match event:
            case SaslEvidenceReceived(evidence=PlainCredentials() as credentials):
                return self._authenticate(credentials)
            case SaslEvidenceReceived(evidence=TpmKeysReceived() as keys):
                return await self._challenge_tpm(keys)
            case SaslEvidenceReceived(evidence=TpmSegmentTaken()):
                self._connection.challenge_sasl(self._tpm_segment)
            case SaslEvidenceReceived(evidence=TpmToken() as signed):
                credential = Credential(authorization=signed.token)
                self._tpm_claim = ConnectedDevice(
                    signed.id_scope, signed.registration_id, credential
                )
                return self._connection.accept_sasl()
            case SaslEvidenceReceived():
                self._connection.refuse_sasl()
            case OpenRequested():
                await self._open()
            case LinkRequested(link=link, address=address):
                refusal = self._link_refusal(address)
                if refusal is None:
                    self._connection.accept_link(link)
                else:
                    self._connection.refuse_link(link, refusal)
            case RequestReceived(request=request, message=message):
                await self._answer(request, message)
            case Closed(reason=reason):
                logger.debug("AMQP connection closed: %s", reason)
        return []

    def _authenticate(self, credentials: PlainCredentials) -> list[Event]:
        """SASL succeeds for any PLAIN credentials; whether they prove an enrollment is
        answered at OPEN, where the refusal can carry the DPS error (a SASL ``auth``
        outcome carries nothing, and Node then reports a bare NotConnectedError)."""
        self._sasl_credentials = credentials
        return self._connection.accept_sasl()

    async def _challenge_tpm(self, keys: TpmKeysReceived) -> list[Event]:
        """The activation blob in two challenges. A device the service refuses (unknown,
        another EK) gets the SASL outcome ``auth`` with the DPS error body as its
        additional data: the SDKs wait for the blob, so SASL cannot succeed and leave the
        refusal to OPEN as for PLAIN."""
        encoded = TpmKeys(
            base64.b64encode(keys.endorsement_key).decode("ascii"),
            base64.b64encode(keys.storage_root_key).decode("ascii"),
        )
        blob = await self._requests.tpm_challenge(keys.id_scope, keys.registration_id, encoded)
        if isinstance(blob, Answer):
            self._connection.refuse_sasl(blob.body)
            return []
        first, self._tpm_segment = tpm_segments(blob)
        self._connection.challenge_sasl(first)
        return []

    async def _open(self) -> None:
        refusal = await self._attest()
        if refusal is None:
            self._connection.accept_open()
        else:
            self._connection.refuse_open(self._refusal(refusal))

    def _refusal(self, answer: Answer) -> AmqpError:
        """Why OPEN is refused: unauthorized, unless the service could not decide (its
        store cannot serve now), when the device is told to retry."""
        if answer.status < 500:
            return _error(answer, UNAUTHORIZED)
        return _error(answer, _SERVER_ERROR, answer.retry_after or self._retry_after)

    async def _attest(self) -> Answer | None:
        """The device, by its SAS token (SASL) or else its TLS client certificate; None
        when it proves an enrollment, else the error answer."""
        device = self._claimed_device()
        self._sasl_credentials = self._tpm_claim = None  # the attested device holds the rest
        if isinstance(device, Answer):
            return device
        attested = await self._requests.attest(device)
        if isinstance(attested, Answer):
            return attested
        self._device = attested
        return None

    def _claimed_device(self) -> ConnectedDevice | Answer:
        if self._tpm_claim is not None:
            return self._tpm_claim
        credentials = self._sasl_credentials
        if credentials is not None:
            named = registration_address(credentials.authcid)
            if named is None:
                return self._requests.refuse(
                    "The SASL user name is not {idScope}/registrations/{registrationId}"
                )
            return ConnectedDevice(*named, Credential(authorization=credentials.password))
        if not self._client_chain:
            return self._requests.refuse("Neither SASL nor a client certificate named the device")
        try:
            registration_id = read_chain(self._client_chain).common_name
        except DomainError as error:
            return self._requests.refuse(error.message)
        return ConnectedDevice(
            self._requests.service.id_scope,
            registration_id,
            Credential(client_chain=self._client_chain),
        )

    def _unauthorized(self, message: str) -> Answer:
        return self._requests.error(DeviceUnauthorized(message))

    def _link_refusal(self, address: str | None) -> AmqpError | None:
        named = registration_address(address)
        if named is None:
            reason = f"{address!r} is not {{idScope}}/registrations/{{registrationId}}"
            _log_link_refused(self._device, reason)
            return _error(self._requests.error(DomainError(reason)), "amqp:invalid-field")
        device = self._device
        if device is None or (named[0].lower(), named[1].lower()) != (
            device.id_scope.lower(),
            device.registration_id.lower(),
        ):
            reason = f"The link {address!r} names another registration"
            _log_link_refused(device, reason)
            return _error(self._unauthorized(reason), UNAUTHORIZED)
        return None

    async def _answer(self, delivery: DeliveryId, message: RequestMessage) -> None:
        answer = await self._ask(message)
        if answer.status < 300:
            response = ResponseMessage(
                answer.body, message.correlation_id, _retry_after(answer.retry_after)
            )
            self._connection.respond(delivery, response)
            return
        retry = answer.status == 429 or answer.status >= 500
        retry_after = (answer.retry_after or self._retry_after) if retry else None
        condition = _CONDITIONS.get(answer.status, _SERVER_ERROR)
        self._connection.reject(delivery, _error(answer, condition, retry_after))

    async def _ask(self, message: RequestMessage) -> Answer:
        assert self._device is not None  # links are only accepted for a known device
        properties = message.application_properties
        operation = properties.get(OPERATION_TYPE)
        if operation == REGISTER:
            answer = await self._requests.register(self._device, _payload(message.body))
            self._settled = answer.settled
            return answer
        if operation == GET_OPERATION_STATUS:
            operation_id = properties.get(OPERATION_ID)
            if not isinstance(operation_id, str) or not operation_id:
                return self._requests.error(DomainError(f"{OPERATION_ID} is missing"))
            settled, self._settled = self._settled, None
            return await self._requests.poll(self._device, operation_id, settled)
        return self._requests.error(
            DomainError(
                f"{OPERATION_TYPE} {operation!r} is not {REGISTER} or {GET_OPERATION_STATUS}"
            )
        )


def _log_link_refused(device: ConnectedDevice | None, reason: str) -> None:
    logger.info(
        "amqp link refused: %(reason)s",
        {
            "event": "link_refused",
            "protocol": "amqp",
            "registration_id": device.registration_id if device else None,
            "reason": reason,
        },
    )


def _payload(body: bytes | str | None) -> bytes:
    """A register body: Data JSON (Node, C); C# may send an empty Data section."""
    if isinstance(body, str):
        return body.encode()
    return body or b""


def _retry_after(seconds: int | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"retry-after": str(seconds), "Retry-After": str(seconds)}


def _error(answer: Answer, condition: str, retry_after: int | None = None) -> AmqpError:
    info = tuple(_retry_after(retry_after).items())
    return AmqpError(condition, answer.body.decode(), info)
