"""The service API clients, sync and async, over httpx.

Both build the same requests (``_Call``) and read the same responses; only sending differs.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from dpsd.client._auth import ConnectionString, SasAuth, audience_host, endpoint_url
from dpsd.client._errors import error_from_response
from dpsd.client._models import (
    AttestationMechanism,
    BulkEnrollmentOperationResult,
    BulkMode,
    DeviceRegistrationState,
    Record,
)

API_VERSION = "2021-10-01"
DEFAULT_TIMEOUT = 30.0
BULK_MODES = ("create", "update", "updateIfMatchETag", "delete")

Verify = bool | str | os.PathLike[str] | ssl.SSLContext
"""True (the system's CAs), False (no check), a CA bundle path, or an SSL context."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """Individual enrollments or enrollment groups: where they live and how they are named."""

    path: str
    id_field: str
    bulk_field: str


_ENROLLMENTS = _Kind("enrollments", "registrationId", "enrollments")
_GROUPS = _Kind("enrollmentGroups", "enrollmentGroupId", "enrollmentGroups")


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    json: Any = None  # None: no body
    headers: dict[str, str] = field(default_factory=dict)


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


def _if_match(etag: str | None) -> dict[str, str]:
    return {} if etag is None else {"If-Match": etag}


def _record_id(kind: _Kind, record: Record) -> str:
    identifier = record.get(kind.id_field)
    if not isinstance(identifier, str) or not identifier:
        raise ValueError(f"the record needs a '{kind.id_field}'")
    return identifier


def _check_page_size(page_size: int | None) -> None:
    if page_size is not None and (isinstance(page_size, bool) or page_size < 1):
        raise ValueError(f"page_size must be a positive number, not {page_size!r}")


INCLUDE_SECRETS_HEADER = "x-dpsd-include-secrets"
"""A dpsd extension of query: the records come with their keys and certificates."""


def _page_call(
    path: str,
    body: Any,
    page_size: int | None,
    continuation: str | None,
    include_secrets: bool = False,
) -> _Call:
    headers: dict[str, str] = {INCLUDE_SECRETS_HEADER: "true"} if include_secrets else {}
    if page_size is not None:
        headers["x-ms-max-item-count"] = str(page_size)
    if continuation is not None:
        headers["x-ms-continuation"] = continuation
    return _Call("POST", path, body, headers)


def _bulk_call(kind: _Kind, mode: BulkMode, records: Iterable[Record]) -> _Call:
    if mode not in BULK_MODES:
        raise ValueError(f"mode must be one of {', '.join(BULK_MODES)}, not {mode!r}")
    return _Call("POST", _path(kind.path), {"mode": mode, kind.bulk_field: list(records)})


def _body(response: httpx.Response) -> Any:
    """The JSON body of a success; an error answer raises its DpsError."""
    if response.is_error:
        raise error_from_response(response)
    return response.json() if response.content else None


def _page(response: httpx.Response) -> tuple[list[Record], str | None]:
    items = _body(response)
    if not isinstance(items, list):
        raise TypeError(f"a query page should be a JSON array, not {type(items).__name__}")
    return items, response.headers.get("x-ms-continuation") or None


def _ssl_context(verify: Verify) -> ssl.SSLContext | bool:
    if isinstance(verify, str | os.PathLike):
        return ssl.create_default_context(cafile=os.fspath(verify))
    return verify


def _http_options(
    endpoint: str,
    key_name: str,
    key: str,
    verify: Verify,
    timeout: float | httpx.Timeout,
) -> dict[str, Any]:
    base = endpoint_url(endpoint)
    return {
        "base_url": base,
        "auth": SasAuth(audience_host(base), key_name, key),
        "params": {"api-version": API_VERSION},
        "headers": {"Accept": "application/json"},
        "verify": _ssl_context(verify),
        "timeout": timeout,
    }


# --- sync -----------------------------------------------------------------------------------


class EnrollmentOperations:
    """Individual enrollments (``client.enrollments``) or enrollment groups
    (``client.enrollment_groups``): records are dicts in the wire's camelCase."""

    def __init__(self, http: httpx.Client, kind: _Kind) -> None:
        self._http = http
        self._kind = kind

    def _send(self, call: _Call) -> httpx.Response:
        return self._http.request(call.method, call.path, json=call.json, headers=call.headers)

    def create_or_update(self, record: Record, *, if_match: str | None = None) -> Record:
        """Create the record, or update it at ``if_match`` (an etag, or ``*`` for any).
        Without ``if_match`` an existing record raises ConflictError."""
        path = _path(self._kind.path, _record_id(self._kind, record))
        result: Record = _body(self._send(_Call("PUT", path, record, _if_match(if_match))))
        return result

    def get(self, id: str) -> Record:
        result: Record = _body(self._send(_Call("GET", _path(self._kind.path, id))))
        return result

    def delete(self, id: str, *, if_match: str | None = None) -> None:
        _body(self._send(_Call("DELETE", _path(self._kind.path, id), None, _if_match(if_match))))

    def attestation_mechanism(self, id: str) -> AttestationMechanism:
        """The attestation with its keys (which get and query leave out)."""
        path = _path(self._kind.path, id, "attestationmechanism")
        result: AttestationMechanism = _body(self._send(_Call("POST", path)))
        return result

    def query(
        self,
        query: str = "SELECT *",
        *,
        page_size: int | None = None,
        include_secrets: bool = False,
    ) -> Iterator[Record]:
        """The records the query selects, in id order, fetched page by page as iterated.

        ``include_secrets`` asks for the keys and certificates too, as attestation_mechanism
        gives them: a dpsd extension that needs the EnrollmentWrite right; other services
        ignore it and leave them out."""
        _check_page_size(page_size)
        return self._pages(query, page_size, include_secrets)

    def _pages(self, query: str, page_size: int | None, include_secrets: bool) -> Iterator[Record]:
        path = _path(self._kind.path, "query")
        continuation: str | None = None
        while True:
            call = _page_call(path, {"query": query}, page_size, continuation, include_secrets)
            items, continuation = _page(self._send(call))
            yield from items
            if continuation is None:
                return

    def run_bulk_operation(
        self, mode: BulkMode, records: Iterable[Record]
    ) -> BulkEnrollmentOperationResult:
        """Apply ``mode`` to each record (at most 10); failures are listed, not raised."""
        result: BulkEnrollmentOperationResult = _body(
            self._send(_bulk_call(self._kind, mode, records))
        )
        return result


class RegistrationOperations:
    """Device registration states (``client.registrations``)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _send(self, call: _Call) -> httpx.Response:
        return self._http.request(call.method, call.path, json=call.json, headers=call.headers)

    def get(self, id: str) -> DeviceRegistrationState:
        result: DeviceRegistrationState = _body(
            self._send(_Call("GET", _path("registrations", id)))
        )
        return result

    def delete(self, id: str, *, if_match: str | None = None) -> None:
        _body(self._send(_Call("DELETE", _path("registrations", id), None, _if_match(if_match))))

    def query(
        self, group_id: str, *, page_size: int | None = None
    ) -> Iterator[DeviceRegistrationState]:
        """The registration states of the devices of an enrollment group, page by page."""
        _check_page_size(page_size)
        return self._pages(group_id, page_size)

    def _pages(self, group_id: str, page_size: int | None) -> Iterator[DeviceRegistrationState]:
        path = _path("registrations", group_id, "query")
        continuation: str | None = None
        while True:
            items, continuation = _page(self._send(_page_call(path, None, page_size, continuation)))
            yield from items
            if continuation is None:
                return


class DpsServiceClient:
    """The DPS service API (api-version 2021-10-01), signing each request with a fresh
    SharedAccessSignature. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        endpoint: str,
        key_name: str,
        key: str,
        *,
        verify: Verify = True,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """``endpoint``: ``host[:port]`` (https) or an http(s) URL; ``key``: the base64 key of
        the shared access policy ``key_name``; ``transport``: handed to httpx as is."""
        options = _http_options(endpoint, key_name, key, verify, timeout)
        self._http = httpx.Client(transport=transport, **options)
        self.enrollments = EnrollmentOperations(self._http, _ENROLLMENTS)
        self.enrollment_groups = EnrollmentOperations(self._http, _GROUPS)
        self.registrations = RegistrationOperations(self._http)

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        *,
        verify: Verify = True,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> Self:
        """``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`` as ``dpsd info``
        prints it; HostName may carry a port and an ``http://`` or ``https://`` prefix."""
        parsed = ConnectionString.parse(connection_string)
        return cls(
            parsed.endpoint,
            parsed.key_name,
            parsed.key,
            verify=verify,
            transport=transport,
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- async ----------------------------------------------------------------------------------


class AsyncEnrollmentOperations:
    """Individual enrollments or enrollment groups, as EnrollmentOperations, awaited."""

    def __init__(self, http: httpx.AsyncClient, kind: _Kind) -> None:
        self._http = http
        self._kind = kind

    async def _send(self, call: _Call) -> httpx.Response:
        return await self._http.request(
            call.method, call.path, json=call.json, headers=call.headers
        )

    async def create_or_update(self, record: Record, *, if_match: str | None = None) -> Record:
        """Create the record, or update it at ``if_match`` (an etag, or ``*`` for any).
        Without ``if_match`` an existing record raises ConflictError."""
        path = _path(self._kind.path, _record_id(self._kind, record))
        result: Record = _body(await self._send(_Call("PUT", path, record, _if_match(if_match))))
        return result

    async def get(self, id: str) -> Record:
        result: Record = _body(await self._send(_Call("GET", _path(self._kind.path, id))))
        return result

    async def delete(self, id: str, *, if_match: str | None = None) -> None:
        call = _Call("DELETE", _path(self._kind.path, id), None, _if_match(if_match))
        _body(await self._send(call))

    async def attestation_mechanism(self, id: str) -> AttestationMechanism:
        """The attestation with its keys (which get and query leave out)."""
        path = _path(self._kind.path, id, "attestationmechanism")
        result: AttestationMechanism = _body(await self._send(_Call("POST", path)))
        return result

    def query(
        self,
        query: str = "SELECT *",
        *,
        page_size: int | None = None,
        include_secrets: bool = False,
    ) -> AsyncIterator[Record]:
        """The records the query selects, in id order, fetched page by page as iterated
        (``async for``); ``include_secrets`` as EnrollmentOperations.query."""
        _check_page_size(page_size)
        return self._pages(query, page_size, include_secrets)

    async def _pages(
        self, query: str, page_size: int | None, include_secrets: bool
    ) -> AsyncIterator[Record]:
        path = _path(self._kind.path, "query")
        continuation: str | None = None
        while True:
            call = _page_call(path, {"query": query}, page_size, continuation, include_secrets)
            items, continuation = _page(await self._send(call))
            for item in items:
                yield item
            if continuation is None:
                return

    async def run_bulk_operation(
        self, mode: BulkMode, records: Iterable[Record]
    ) -> BulkEnrollmentOperationResult:
        """Apply ``mode`` to each record (at most 10); failures are listed, not raised."""
        result: BulkEnrollmentOperationResult = _body(
            await self._send(_bulk_call(self._kind, mode, records))
        )
        return result


class AsyncRegistrationOperations:
    """Device registration states, as RegistrationOperations, awaited."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def _send(self, call: _Call) -> httpx.Response:
        return await self._http.request(
            call.method, call.path, json=call.json, headers=call.headers
        )

    async def get(self, id: str) -> DeviceRegistrationState:
        call = _Call("GET", _path("registrations", id))
        result: DeviceRegistrationState = _body(await self._send(call))
        return result

    async def delete(self, id: str, *, if_match: str | None = None) -> None:
        call = _Call("DELETE", _path("registrations", id), None, _if_match(if_match))
        _body(await self._send(call))

    def query(
        self, group_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[DeviceRegistrationState]:
        """The registration states of the devices of an enrollment group, page by page."""
        _check_page_size(page_size)
        return self._pages(group_id, page_size)

    async def _pages(
        self, group_id: str, page_size: int | None
    ) -> AsyncIterator[DeviceRegistrationState]:
        path = _path("registrations", group_id, "query")
        continuation: str | None = None
        while True:
            call = _page_call(path, None, page_size, continuation)
            items, continuation = _page(await self._send(call))
            for item in items:
                yield item
            if continuation is None:
                return


class AsyncDpsServiceClient:
    """DpsServiceClient for asyncio. Use with ``async with``, or await ``close()``."""

    def __init__(
        self,
        endpoint: str,
        key_name: str,
        key: str,
        *,
        verify: Verify = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """``endpoint``: ``host[:port]`` (https) or an http(s) URL; ``key``: the base64 key of
        the shared access policy ``key_name``; ``transport``: handed to httpx as is."""
        options = _http_options(endpoint, key_name, key, verify, timeout)
        self._http = httpx.AsyncClient(transport=transport, **options)
        self.enrollments = AsyncEnrollmentOperations(self._http, _ENROLLMENTS)
        self.enrollment_groups = AsyncEnrollmentOperations(self._http, _GROUPS)
        self.registrations = AsyncRegistrationOperations(self._http)

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        *,
        verify: Verify = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> Self:
        """``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`` as ``dpsd info``
        prints it; HostName may carry a port and an ``http://`` or ``https://`` prefix."""
        parsed = ConnectionString.parse(connection_string)
        return cls(
            parsed.endpoint,
            parsed.key_name,
            parsed.key,
            verify=verify,
            transport=transport,
            timeout=timeout,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
