"""Path routing the way DPS clients need it.

Static segments match case-insensitively (Node uses both ``/enrollmentGroups`` and
``/enrollmentgroups``) and parameters are cut from the raw path before percent-decoding,
so an id holding ``%2F`` stays one segment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from dpsd.domain.sas import AccessRights
from dpsd.http.errors import MethodNotAllowed, RouteNotFound

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: tuple[str, ...]
    handler: Handler
    right: AccessRights | Callable[[Request], AccessRights] | None
    """What the caller's policy must grant: fixed, or read off the request."""

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.template):
            return None
        params: dict[str, str] = {}
        for pattern, segment in zip(self.template, segments, strict=True):
            if pattern.startswith("{"):
                params[pattern[1:-1]] = unquote(segment)
            elif pattern != segment.lower():
                return None
        return params


def split_path(raw_path: bytes) -> list[str]:
    text = raw_path.decode("latin-1").split("?", 1)[0]
    segments = text.strip("/").split("/")
    return [] if segments == [""] else segments


class Router:
    """Routes are grouped by segment count; the list of each group keeps the given order."""

    def __init__(self, routes: list[Route]) -> None:
        self._by_length: dict[int, list[Route]] = {}
        for route in routes:
            self._by_length.setdefault(len(route.template), []).append(route)

    def resolve(self, method: str, raw_path: bytes) -> tuple[Route, dict[str, str]]:
        segments = split_path(raw_path)
        allowed: list[str] = []
        for route in self._by_length.get(len(segments), ()):
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed here; use {', '.join(allowed)}", allowed
            )
        raise RouteNotFound("No such resource in the Device Provisioning Service API")
