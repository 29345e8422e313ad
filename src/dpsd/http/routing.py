"""Path routing the way DPS clients need it.

Static segments match case-insensitively (Node uses both ``/enrollmentGroups`` and
``/enrollmentgroups``) and parameters are cut from the raw path before percent-decoding,
so an id holding ``%2F`` stays one segment. A route names the rights its caller needs, in
the rights of its API (the service API's by default; a built-in IoT hub's for the hub's).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic
from urllib.parse import unquote

from typing_extensions import TypeVar

from dpsd.domain.sas import AccessRights
from dpsd.http.errors import MethodNotAllowed, RouteNotFound
from dpsd.http.exchange import HttpRequest, HttpResponse

Handler = Callable[[HttpRequest, dict[str, str]], Awaitable[HttpResponse]]
R = TypeVar("R", bound=enum.Flag, default=AccessRights)


@dataclass(frozen=True, slots=True)
class Route(Generic[R]):
    method: str
    template: tuple[str, ...]
    handler: Handler
    right: R | Callable[[HttpRequest], R] | None
    """What the caller's policy must grant: fixed, or read off the request."""
    operation: str = field(init=False, repr=False, compare=False)
    """The method and the path template (``GET /enrollments/{id}``), for logs and metrics."""
    # (position, segment) of each static segment, and (position, name) of each parameter
    _static: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)
    _params: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        static = tuple((i, s) for i, s in enumerate(self.template) if not s.startswith("{"))
        params = tuple((i, s[1:-1]) for i, s in enumerate(self.template) if s.startswith("{"))
        object.__setattr__(self, "_static", static)
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "operation", f"{self.method} /{'/'.join(self.template)}")

    def fits(self, segments: list[str]) -> bool:
        """Whether the path has this route's shape (segment count and static segments)."""
        if len(segments) != len(self.template):
            return False
        return all(segments[i].lower() == static for i, static in self._static)

    def params(self, segments: list[str]) -> dict[str, str]:
        return {name: unquote(segments[i]) for i, name in self._params}

    def match(self, segments: list[str]) -> dict[str, str] | None:
        return self.params(segments) if self.fits(segments) else None


def split_path(raw_path: bytes) -> list[str]:
    text = raw_path.decode("latin-1").split("?", 1)[0]
    segments = text.strip("/").split("/")
    return [] if segments == [""] else segments


class Router(Generic[R]):
    """Routes are grouped by segment count and first segment, each group in the given order:
    a path can only match the routes that start with its first segment or a parameter.
    ``api``: what a path that matches no route is not part of, for the error message."""

    def __init__(
        self, routes: list[Route[R]], api: str = "the Device Provisioning Service API"
    ) -> None:
        self._api = api
        self._param_first: dict[int, list[Route[R]]] = {}
        for route in routes:
            if not route.template or route.template[0].startswith("{"):
                self._param_first.setdefault(len(route.template), []).append(route)
        starts = {(len(r.template), r.template[0]) for r in routes if r.template}
        self._groups = {
            (length, first): [
                route
                for route in routes
                if len(route.template) == length
                and (route.template[0] == first or route.template[0].startswith("{"))
            ]
            for length, first in starts
            if not first.startswith("{")
        }

    def _candidates(self, segments: list[str]) -> list[Route[R]]:
        if segments:
            group = self._groups.get((len(segments), segments[0].lower()))
            if group is not None:
                return group
        return self._param_first.get(len(segments), [])

    def resolve(self, method: str, raw_path: bytes) -> tuple[Route[R], dict[str, str]]:
        """The first route, in the given order, that fits the path and takes the method."""
        segments = split_path(raw_path)
        candidates = self._candidates(segments)
        for route in candidates:
            if route.method == method and route.fits(segments):
                return route, route.params(segments)
        allowed = [route.method for route in candidates if route.fits(segments)]
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed here; use {', '.join(allowed)}", allowed
            )
        raise RouteNotFound(f"No such resource in {self._api}")
