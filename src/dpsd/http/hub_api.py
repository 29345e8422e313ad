"""Handlers of a built-in IoT hub's service API: devices, twins and queries.

Each handler reads the hub it serves from ``params["hub"]`` (its host name, set by the hub
app once the request is authenticated) and the rest from the wire; the use cases decide.
Device ids arrive percent-encoded in the path and are decoded by the router.
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import parse_qsl

import msgspec

from dpsd.domain.hub import HubAccessRights
from dpsd.http.errors import InvalidHeader, PayloadTooLarge, describe_decode_error
from dpsd.http.exchange import HttpRequest, HttpResponse, empty_response, json_response
from dpsd.http.hub_errors import MissingBody
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
HUB_PARAM = "hub"
T = TypeVar("T")


async def read_body(request: HttpRequest, model: type[T]) -> T:
    """The body decoded as ``model``, whatever content type it claims."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    body = await request.body(MAX_BODY_BYTES)
    if body is None:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise MissingBody("The request needs a JSON body")
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.DecodeError as error:
        raise describe_decode_error(error) from error


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
    def __init__(self, service: HubRegistryService) -> None:
        self._service = service

    def routes(self) -> list[Route[HubAccessRights]]:
        read, write = HubAccessRights.REGISTRY_READ, HubAccessRights.REGISTRY_WRITE
        connect = HubAccessRights.SERVICE_CONNECT
        return [
            Route("POST", ("devices", "query"), self.query, connect),
            Route("GET", ("devices",), self.list_devices, read),
            Route("GET", ("devices", "{id}"), self.get_device, read),
            Route("PUT", ("devices", "{id}"), self.put_device, write),
            Route("DELETE", ("devices", "{id}"), self.delete_device, write),
            Route("GET", ("twins", "{id}"), self.get_twin, connect),
            Route("PATCH", ("twins", "{id}"), self.update_twin, connect),
            Route("PUT", ("twins", "{id}"), self.replace_twin, connect),
        ]

    async def put_device(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        body = await read_body(request, DeviceBodyWire)
        device = await self._service.create_or_update_device(
            params[HUB_PARAM],
            params["id"],
            identity_from_wire(body, params["id"]),
            request.headers.get("if-match"),
        )
        return json_response(device_to_wire(device))

    async def get_device(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        device = await self._service.get_device(params[HUB_PARAM], params["id"])
        return json_response(device_to_wire(device))

    async def delete_device(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        await self._service.delete_device(
            params[HUB_PARAM], params["id"], request.headers.get("if-match")
        )
        return empty_response(204)

    async def list_devices(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        top = _whole_number(_query_parameter(request, "top"), "top")
        devices = await self._service.list_devices(params[HUB_PARAM], top)
        return json_response([device_to_wire(device) for device in devices])

    async def get_twin(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        device = await self._service.get_device(params[HUB_PARAM], params["id"])
        return json_response(twin_to_wire(device))

    async def update_twin(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        body = await read_body(request, TwinBodyWire)
        device = await self._service.update_twin(
            params[HUB_PARAM],
            params["id"],
            twin_content_from_wire(body),
            request.headers.get("if-match"),
        )
        return json_response(twin_to_wire(device))

    async def replace_twin(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        body = await read_body(request, TwinBodyWire)
        device = await self._service.replace_twin(
            params[HUB_PARAM],
            params["id"],
            twin_content_from_wire(body),
            request.headers.get("if-match"),
        )
        return json_response(twin_to_wire(device))

    async def query(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        specification = await read_body(request, QuerySpecificationWire)
        if not specification.query:
            raise MissingBody("The query specification needs a 'query'")
        page = await self._service.query(
            params[HUB_PARAM],
            specification.query,
            request.headers.get("x-ms-continuation") or None,
            _whole_number(request.headers.get("x-ms-max-item-count"), "x-ms-max-item-count"),
        )
        return _page_response(page)
