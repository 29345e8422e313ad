"""Writing device identities and twins into an IoT hub's registry over its service REST
API, as Azure DPS does: an Azure IoT hub, or a hub dpsd serves itself.

Each request carries a SharedAccessSignature of the hub's policy, made as the Python
service client makes it (``sr`` the URL-encoded host name from the connection, an hour of
validity), and used for the requests of the next five minutes. This module makes every
request (method, path and api-version, Host, SAS, If-Match, JSON body) and reads every
answer (status, the hub's error body) the same way for every hub; a HubTransport
(``integrations.hub_http``) carries the exchange: over the network to an Azure hub, or in
process (``integrations.in_process``) to a hub dpsd serves itself, whose HTTP application
then authenticates, routes and answers it as it answers any client. Going through the
listener's socket instead cost five times as much CPU per landing (two TLS round trips
served by the same event loop that waits for them) and made landings time out under load.

Failures become HubRegistryError with the hub's status and its error body (cut to
about a kilobyte, with every key and signature this client knows of blotted out). Over
the network each step of a request (connect, send, each read) is bounded by the
transport's timeout; the in-process transport has no timeouts of its own. Callers bound a
call as a whole: dpsd's registrations bound each landing, all its requests together (use
case ``DeviceRegistrationService._land``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

import msgspec

from dpsd.domain.hub_device import DeviceIdentity, TwinContent
from dpsd.domain.sas import SCHEME, sign
from dpsd.hub_wire import (
    API_VERSION,
    TwinBodyWire,
    identity_to_wire,
    twin_content_from_wire,
    twin_content_to_wire,
)
from dpsd.integrations.hub_http import HubRequest, HubResponse, HubTransport, HubUnreachable
from dpsd.service.ports import HubConnection, HubRegistryError
from dpsd.version import dpsd_version

TOKEN_SECONDS = 3600
# A token is used for this long after it is made, then a new one is signed: it is always
# valid for most of an hour, and a hub sees the same token for the requests of a landing.
TOKEN_REUSE_SECONDS = 300
# Tokens remembered at once, one per hub connection; past this many they are all forgotten.
_MAX_TOKENS = 256
MAX_MESSAGE_CHARS = 1024
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
WILDCARD_IF_MATCH = '"*"'
_HIDDEN = "[hidden]"
_USER_AGENT = f"dpsd/{dpsd_version()}"
_encoder = msgspec.json.Encoder()


def _device_path(prefix: str, device_id: str) -> str:
    return f"/{prefix}/{quote(device_id, safe='')}"


@dataclass(frozen=True, slots=True)
class _Token:
    """A SharedAccessSignature of a hub's policy, its signature and when it expires; the
    request headers made with it (Host among them), by whether a JSON body goes along and
    the If-Match, built once."""

    host: str
    authorization: str
    signature: str
    expiry: int
    _headers: dict[tuple[bool, str | None], tuple[tuple[str, str], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def headers(self, with_body: bool, if_match: str | None) -> tuple[tuple[str, str], ...]:
        made = self._headers.get((with_body, if_match))
        if made is None:
            made = (
                ("host", self.host),
                ("authorization", self.authorization),
                ("user-agent", _USER_AGENT),
            )
            if with_body:
                made += (("content-type", JSON_CONTENT_TYPE),)
            if if_match is not None:
                made += (("if-match", if_match),)
            self._headers[with_body, if_match] = made
        return made


def _sign(hub: HubConnection, expiry: int) -> _Token:
    try:
        key = base64.b64decode(hub.key, validate=True)
    except (binascii.Error, ValueError):
        raise HubRegistryError(
            None, f"the key of policy {hub.policy_name!r} is not base64"
        ) from None
    resource = quote_plus(hub.host_name)
    signature = base64.b64encode(sign(resource, expiry, key)).decode("ascii")
    authorization = (
        f"{SCHEME} sr={resource}&sig={quote(signature, safe='')}"
        f"&se={expiry}&skn={quote(hub.policy_name, safe='')}"
    )
    return _Token(hub.host_name.removesuffix(":443"), authorization, signature, expiry)


class _Call:
    """One request to a hub's registry and what must never show in an error about it."""

    def __init__(self, hub: HubConnection, token: _Token, secrets: Iterable[str | None]) -> None:
        self.hub = hub
        self.secrets = [secret for secret in (hub.key, token.signature, *secrets) if secret]
        self.token = token

    def error(self, status: int | None, text: str) -> HubRegistryError:
        for secret in self.secrets:
            text = text.replace(secret, _HIDDEN).replace(quote(secret, safe=""), _HIDDEN)
        return HubRegistryError(status, text[:MAX_MESSAGE_CHARS])

    def refused(self, response: HubResponse) -> HubRegistryError:
        text = response.text.strip() or f"IoT hub {self.hub.host_name} answered {response.status}"
        return self.error(response.status, text)


class IotHubRestRegistry:
    """The IotHubRegistry port on IoT Hub's REST API (api-version 2021-04-12).

    ``transport``: for Azure hubs; ``builtin_transport``: for the hubs dpsd serves itself
    (None where there are none to serve)."""

    def __init__(
        self,
        transport: HubTransport,
        builtin_transport: HubTransport | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._transport = transport
        self._builtin_transport = builtin_transport
        self._clock = clock
        self._tokens: dict[HubConnection, _Token] = {}

    async def put_device(self, hub: HubConnection, identity: DeviceIdentity) -> None:
        keys = identity.authentication.symmetric_key
        call = self._call(hub, () if keys is None else (keys.primary_key, keys.secondary_key))
        path = _device_path("devices", identity.device_id)
        body = _encoder.encode(identity_to_wire(identity))
        response = await self._send(call, "PUT", path, body)
        if response.status == 409:
            response = await self._send(call, "PUT", path, body, if_match=WILDCARD_IF_MATCH)
        if response.status not in (200, 201):
            raise call.refused(response)

    async def get_twin(self, hub: HubConnection, device_id: str) -> TwinContent | None:
        call = self._call(hub)
        response = await self._send(call, "GET", _device_path("twins", device_id))
        if response.status == 404:
            return None
        if response.status != 200:
            raise call.refused(response)
        try:
            return twin_content_from_wire(msgspec.json.decode(response.body, type=TwinBodyWire))
        except msgspec.DecodeError:
            raise call.error(
                response.status,
                f"IoT hub {hub.host_name} answered something other than a twin",
            ) from None

    async def replace_twin(self, hub: HubConnection, device_id: str, twin: TwinContent) -> None:
        call = self._call(hub)
        body = _encoder.encode(twin_content_to_wire(twin))
        path = _device_path("twins", device_id)
        response = await self._send(call, "PUT", path, body, if_match=WILDCARD_IF_MATCH)
        if response.status != 200:
            raise call.refused(response)

    async def delete_device(self, hub: HubConnection, device_id: str) -> None:
        call = self._call(hub)
        path = _device_path("devices", device_id)
        response = await self._send(call, "DELETE", path, if_match=WILDCARD_IF_MATCH)
        if response.status not in (200, 204, 404):
            raise call.refused(response)

    def _call(self, hub: HubConnection, secrets: Iterable[str | None] = ()) -> _Call:
        return _Call(hub, self._token(hub), secrets)

    def _token(self, hub: HubConnection) -> _Token:
        now = int(self._clock())
        token = self._tokens.get(hub)
        if token is None or token.expiry - TOKEN_SECONDS + TOKEN_REUSE_SECONDS <= now:
            token = _sign(hub, now + TOKEN_SECONDS)
            if len(self._tokens) >= _MAX_TOKENS:
                self._tokens.clear()
            self._tokens[hub] = token
        return token

    def _transport_for(self, hub: HubConnection) -> HubTransport:
        if not hub.builtin:
            return self._transport
        if self._builtin_transport is None:
            raise HubRegistryError(
                None, f"IoT hub {hub.host_name} is built in, but dpsd serves no built-in hubs here"
            )
        return self._builtin_transport

    async def _send(
        self,
        call: _Call,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        if_match: str | None = None,
    ) -> HubResponse:
        transport = self._transport_for(call.hub)
        request = HubRequest(
            method,
            call.hub.host_name,
            f"{path}?api-version={API_VERSION}",
            call.token.headers(body is not None, if_match),
            body or b"",
        )
        try:
            return await transport.send(request)
        except HubUnreachable as error:
            raise call.error(None, f"IoT hub {call.hub.host_name} {error}") from error
