"""Handlers of a built-in IoT hub's service API: devices, twins and queries.

A HubHandlers serves one hub, the one the hub app found for the request; the rest comes
from the wire, and the use cases decide. Device ids arrive percent-encoded in the path and
are decoded by the router.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import parse_qsl

from dpsd.domain.hub import HubAccessRights, LinkedHub
from dpsd.domain.hub_device import HubDevice
from dpsd.http.bodies import check_declared_length, decode_json, too_large
from dpsd.http.errors import InvalidHeader
from dpsd.http.exchange import HttpRequest, HttpResponse, json_response
from dpsd.http.hub_errors import MissingBody
from dpsd.http.records import Delete, Params, Read, RecordHandlers, Write
from dpsd.http.routing import Route
from dpsd.hub_wire import (
    DeviceBodyWire,
    QuerySpecificationWire,
    TwinBodyWire,
    device_to_wire,
    identity_from_wire,
    twin_content_from_wire,
    twin_to_wire,
)
from dpsd.service.hub_registry import HubQueryPage, HubRegistryService

# Room for a whole twin echoed back (tags, desired and reported properties, metadata).
MAX_BODY_BYTES = 256 * 1024
T = TypeVar("T")


async def read_body(request: HttpRequest, model: type[T]) -> T:
    """The body decoded as ``model``, whatever content type it claims."""
    check_declared_length(request, MAX_BODY_BYTES)
    body = await request.body(MAX_BODY_BYTES)
    if body is None:
        raise too_large(MAX_BODY_BYTES)
    if not body.strip():
        raise MissingBody("The request needs a JSON body")
    return decode_json(body, model)


def _query_parameter(request: HttpRequest, name: str) -> str | None:
    query: str = request.scope.get("query_string", b"").decode("latin-1")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key.lower() == name:
            return value
    return None


def _whole_number(text: str | None, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise InvalidHeader(f"{what} must be a whole number, not {text!r}")
    return int(value)


def _page_response(page: HubQueryPage) -> HttpResponse:
    """A bare JSON array; the continuation header only when more pages follow."""
    headers = {"x-ms-item-type": "raw" if page.raw is not None else "twin"}
    if page.continuation is not None:
        headers["x-ms-continuation"] = page.continuation
    items = page.raw if page.raw is not None else [twin_to_wire(d) for d in page.devices]
    return json_response(items, headers=headers)


class HubHandlers:
    """The devices and twins of ``hub``, each kind served through http.records; the list
    and the query of devices are actions of the devices."""

    def __init__(self, service: HubRegistryService, hub: LinkedHub) -> None:
        self._service = service
        self._hub = hub

    def routes(self) -> list[Route[HubAccessRights]]:
        read, write = HubAccessRights.REGISTRY_READ, HubAccessRights.REGISTRY_WRITE
        connect = HubAccessRights.SERVICE_CONNECT
        devices = RecordHandlers(
            "devices",
            read,
            write,
            get=Read(self._get_device, device_to_wire),
            put=Write(DeviceBodyWire, self._put_device, device_to_wire, read_body),
            delete=Delete(self._delete_device),
            actions=(
                Route("POST", ("devices", "query"), self.query, connect),
                Route("GET", ("devices",), self.list_devices, read),
            ),
        )
        twins = RecordHandlers(
            "twins",
            connect,
            connect,
            get=Read(self._get_device, twin_to_wire),
            put=Write(TwinBodyWire, self._replace_twin, twin_to_wire, read_body),
            patch=Write(TwinBodyWire, self._update_twin, twin_to_wire, read_body),
        )
        return [*devices.routes(), *twins.routes()]

    def _get_device(self, params: Params) -> Awaitable[HubDevice]:
        return self._service.get_device(self._hub, params["id"])

    def _put_device(
        self, params: Params, body: DeviceBodyWire, if_match: str | None
    ) -> Awaitable[HubDevice]:
        identity = identity_from_wire(body, params["id"])
        return self._service.create_or_update_device(self._hub, params["id"], identity, if_match)

    def _delete_device(self, params: Params, if_match: str | None) -> Awaitable[None]:
        return self._service.delete_device(self._hub, params["id"], if_match)

    def _update_twin(
        self, params: Params, body: TwinBodyWire, if_match: str | None
    ) -> Awaitable[HubDevice]:
        patch = twin_content_from_wire(body)
        return self._service.update_twin(self._hub, params["id"], patch, if_match)

    def _replace_twin(
        self, params: Params, body: TwinBodyWire, if_match: str | None
    ) -> Awaitable[HubDevice]:
        content = twin_content_from_wire(body)
        return self._service.replace_twin(self._hub, params["id"], content, if_match)

    async def list_devices(self, request: HttpRequest, params: Params) -> HttpResponse:
        top = _whole_number(_query_parameter(request, "top"), "top")
        devices = await self._service.list_devices(self._hub, top)
        return json_response([device_to_wire(device) for device in devices])

    async def query(self, request: HttpRequest, params: Params) -> HttpResponse:
        specification = await read_body(request, QuerySpecificationWire)
        if not specification.query:
            raise MissingBody("The query specification needs a 'query'")
        page = await self._service.query(
            self._hub,
            specification.query,
            request.headers.get("x-ms-continuation") or None,
            _whole_number(request.headers.get("x-ms-max-item-count"), "x-ms-max-item-count"),
        )
        return _page_response(page)
