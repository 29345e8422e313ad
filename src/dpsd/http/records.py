"""One shape for the handlers of records addressed by id, whatever their kind.

Every such handler does the same: read the id from the path (and If-Match), decode the body
into the kind's wire model, call one use case, encode the record it returns. What differs
between kinds is data: the path segment, the wire models and their conversions, the use
cases and the right each route needs. So each kind is an instance of RecordHandlers: the
DPS service API's individual enrollments and enrollment groups (http.service_api, with
their query, bulk and attestation routes as actions), a built-in hub's devices and twins.

Use cases take the path parameters: ``params["id"]``, and whatever the app that routes the
request adds to them (a built-in hub's app adds the hub the request is for).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from dpsd.http.bodies import read_json
from dpsd.http.exchange import HttpRequest, HttpResponse, empty_response, json_response
from dpsd.http.routing import Route

Params = dict[str, str]
Rec = TypeVar("Rec")
W = TypeVar("W")
Right = TypeVar("Right", bound=enum.Flag)
RightOf: TypeAlias = Right | Callable[[HttpRequest], Right] | None
"""What a route's caller must hold, as Route.right takes it: fixed, or read off the request."""


class Operation(Protocol):
    """What one method does to the record at ``/{segment}/{id}``."""

    async def handle(self, request: HttpRequest, params: Params) -> HttpResponse: ...


@dataclass(frozen=True, slots=True)
class Read(Generic[Rec]):
    """The record ``find(params)`` returns, encoded."""

    find: Callable[[Params], Awaitable[Rec]]
    encode: Callable[[Rec], object]

    async def handle(self, request: HttpRequest, params: Params) -> HttpResponse:
        return json_response(self.encode(await self.find(params)))


@dataclass(frozen=True, slots=True)
class Write(Generic[W, Rec]):
    """The body decoded as ``wire`` (by ``read_body``), written by ``write(params, body,
    if_match)``; the record written, encoded."""

    wire: type[W]
    write: Callable[[Params, W, str | None], Awaitable[Rec]]
    encode: Callable[[Rec], object]
    read_body: Callable[[HttpRequest, type[W]], Awaitable[W]] = read_json

    async def handle(self, request: HttpRequest, params: Params) -> HttpResponse:
        body = await self.read_body(request, self.wire)
        record = await self.write(params, body, request.headers.get("if-match"))
        return json_response(self.encode(record))


@dataclass(frozen=True, slots=True)
class Delete:
    """``remove(params, if_match)``; no content."""

    remove: Callable[[Params, str | None], Awaitable[None]]

    async def handle(self, request: HttpRequest, params: Params) -> HttpResponse:
        await self.remove(params, request.headers.get("if-match"))
        return empty_response(204)


@dataclass(frozen=True, slots=True)
class RecordHandlers(Generic[Right]):
    """The routes of one kind of record: GET, PUT, PATCH and DELETE of ``/{segment}/{id}``
    as the kind has them, GET guarded by ``read_right`` and the others by ``write_right``.

    ``actions``: routes of the kind's own (a query, a bulk operation, a sub-resource),
    matched before the record's, so that ``/{segment}/query`` is not taken for an id."""

    segment: str
    read_right: RightOf[Right]
    write_right: RightOf[Right]
    get: Read[Any] | None = None
    put: Write[Any, Any] | None = None
    patch: Write[Any, Any] | None = None
    delete: Delete | None = None
    actions: Sequence[Route[Right]] = ()

    def routes(self) -> list[Route[Right]]:
        path = (self.segment, "{id}")
        methods: list[tuple[str, Operation | None, RightOf[Right]]] = [
            ("GET", self.get, self.read_right),
            ("PUT", self.put, self.write_right),
            ("PATCH", self.patch, self.write_right),
            ("DELETE", self.delete, self.write_right),
        ]
        record: list[Route[Right]] = [
            Route(method, path, operation.handle, right)
            for method, operation, right in methods
            if operation is not None
        ]
        return [*self.actions, *record]
