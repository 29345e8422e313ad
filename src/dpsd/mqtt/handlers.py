"""What an MQTT device's packets mean to the registration use cases, and how the answers and
errors travel back (the same DPS bodies as over HTTPS, the status in the topic)."""

from __future__ import annotations

from dpsd.devices.answers import Answer, ConnectedDevice, DeviceRequests
from dpsd.domain.registration import RegistrationOperation
from dpsd.mqtt.codec import Connect, ConnectReturnCode
from dpsd.mqtt.topics import DeviceRequest, RegisterRequest
from dpsd.service.device_registration import Credential


def parse_username(username: str) -> tuple[str, str]:
    """``{idScope}/registrations/{registrationId}/api-version=...&ClientVersion=...``."""
    scope, marker, rest = username.partition("/registrations/")
    registration_id = rest.split("/", 1)[0]
    if not marker or not scope or not registration_id:
        raise ValueError("the user name is not {idScope}/registrations/{registrationId}/...")
    return scope, registration_id


class DeviceSession:
    """One connected device: who it said it is, and its requests."""

    __slots__ = ("_attested", "_client_chain", "_device", "_requests", "_settled")

    def __init__(self, requests: DeviceRequests, client_chain: tuple[str, ...]) -> None:
        self._requests = requests
        self._client_chain = client_chain
        self._device = ConnectedDevice("", "", Credential())
        self._attested = False
        # The operation the last register settled, until the device polls it.
        self._settled: RegistrationOperation | None = None

    @property
    def device(self) -> ConnectedDevice | None:
        """The device, once it proved who it is."""
        return self._device if self._attested else None

    async def connect(self, packet: Connect) -> ConnectReturnCode | None:
        """None accepts the device; a code refuses it (and every refusal is logged)."""
        try:
            scope, registration_id = parse_username(packet.username or "")
        except ValueError as error:
            self._requests.refuse(str(error))
            return ConnectReturnCode.BAD_USERNAME_OR_PASSWORD
        if packet.client_id.lower() != registration_id.lower():
            reason = f"the client id {packet.client_id!r} is not the user name's registration id"
            self._requests.refuse(reason, registration_id)
            return ConnectReturnCode.IDENTIFIER_REJECTED
        password = packet.password.decode("utf-8", errors="replace") if packet.password else None
        credential = Credential(authorization=password, client_chain=self._client_chain)
        self._device = ConnectedDevice(scope, registration_id, credential)
        refused = await self._requests.attest(self._device)
        if isinstance(refused, ConnectedDevice):
            self._device = refused
            self._attested = True
            return None
        if refused.status == 401:
            return ConnectReturnCode.NOT_AUTHORIZED
        if refused.status >= 500:  # the store cannot serve now: the device may try again
            return ConnectReturnCode.SERVER_UNAVAILABLE
        return ConnectReturnCode.BAD_USERNAME_OR_PASSWORD

    def answer_at_once(self, request: DeviceRequest) -> Answer | None:
        """The answer to a poll of the operation this connection's last register settled,
        which needs no wait; None: ``request`` needs ``request()``."""
        settled = self._settled
        if settled is None or isinstance(request, RegisterRequest):
            return None
        answer = self._requests.poll_settled(self._device, request.operation_id, settled)
        if answer is not None:
            self._settled = None
        return answer

    async def request(self, request: DeviceRequest, payload: bytes) -> Answer:
        if isinstance(request, RegisterRequest):
            answer = await self._requests.register(self._device, payload)
            self._settled = answer.settled
            return answer
        settled, self._settled = self._settled, None
        return await self._requests.poll(self._device, request.operation_id, settled)
