"""One HTTPS listener, two kinds of service: a request whose Host names an IoT hub that
dpsd serves itself goes to the hub app, everything else to the DPS app.

dpsd's own names (its host name, its certificate's names, its addresses) are known at
start and never looked up, so the DPS path costs a header scan and a set lookup. Other
names are looked up in the store, which another process (``dpsd hub add``) may change:
each answer, a hub or none, is kept a few seconds, so a new hub is served within seconds
without a store read per request. Random Host headers defeat any cache, so lookups of
names not cached are also rationed (a token bucket): past the ration, a name not known
to be a hub goes to the DPS app, and a hub whose entry has just expired is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.domain.hub import LinkedHub
from dpsd.http.app import request_host
from dpsd.http.hub_app import HubApiApp

FindHub = Callable[[str], Awaitable[LinkedHub | None]]


@dataclass(slots=True)
class _Entry:
    hub: LinkedHub | None
    expires: float


class LookupRation:
    """At most ``burst`` lookups at once and ``per_second`` on average."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class HubLookup:
    """``find`` behind a small, short-lived cache of answers, one lookup per name at a
    time, and a ration of lookups. With the defaults, the ration (50 a second) fills at
    most 150 entries in their 3-second life: the capacity bounds memory without pushing
    out answers still fresh."""

    def __init__(
        self,
        find: FindHub,
        *,
        ttl: float = 3.0,
        capacity: int = 1024,
        per_second: float = 50.0,
        burst: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._find = find
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._ration = LookupRation(per_second, burst, clock)
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Future[LinkedHub | None]] = {}

    def __len__(self) -> int:
        """How many answers are remembered (at most ``capacity``)."""
        return len(self._entries)

    async def __call__(self, host: str) -> LinkedHub | None:
        entry = self._entries.get(host)
        if entry is not None and entry.expires > self._clock():
            return entry.hub
        pending = self._pending.get(host)
        if pending is not None:
            return await asyncio.shield(pending)
        if not self._ration.take():
            return entry.hub if entry is not None else None
        return await self._look_up(host)

    async def _look_up(self, host: str) -> LinkedHub | None:
        future: asyncio.Future[LinkedHub | None] = asyncio.get_running_loop().create_future()
        self._pending[host] = future
        try:
            hub = await self._find(host)
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marked as read: there may be no waiter to read it
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(hub)
            self._remember(host, hub)
            return hub
        finally:
            del self._pending[host]

    def _remember(self, host: str, hub: LinkedHub | None) -> None:
        now = self._clock()
        if host not in self._entries and len(self._entries) >= self._capacity:
            self._entries = {k: e for k, e in self._entries.items() if e.expires > now}
            if len(self._entries) >= self._capacity:
                del self._entries[next(iter(self._entries))]
        self._entries[host] = _Entry(hub, now + self._ttl)


def _host_header(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return request_host(value.decode("latin-1"))
    return ""


class HostDispatch:
    """The ASGI app in front: HTTP requests for a built-in hub to ``hub_app``; the rest,
    WebSockets and lifespan included, to ``dps_app`` unchanged.

    ``own_names``: dpsd's own host names and addresses (a port, brackets or case aside);
    ``lookup`` finds the built-in hub any other name names."""

    def __init__(
        self, dps_app: ASGIApp, hub_app: HubApiApp, lookup: HubLookup, own_names: Iterable[str]
    ) -> None:
        self._dps_app = dps_app
        self._hub_app = hub_app
        self._lookup = lookup
        self._own_names = frozenset(request_host(name) for name in own_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._dps_app(scope, receive, send)
            return
        host = _host_header(scope)
        if not host or host in self._own_names:
            await self._dps_app(scope, receive, send)
            return
        hub = await self._lookup(host)
        if hub is None:
            await self._dps_app(scope, receive, send)
        else:
            await self._hub_app.serve(hub, scope, receive, send)
