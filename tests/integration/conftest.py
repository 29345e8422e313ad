"""A built-in IoT hub served in-process over a real SQLite store, behind the host
dispatch, with SAS tokens signed as the service clients sign them."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from dpsd.administration import SystemClock, SystemEntropy
from dpsd.domain.hub import DEFAULT_HUB_POLICIES, OWNER_HUB_POLICY, HubPolicy, LinkedHub
from dpsd.http.host_dispatch import HostDispatch, HubLookup
from dpsd.http.hub_app import HubApiApp, build_hub_app
from dpsd.service.hub_registry import HubRegistryService
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import create_executor
from dpsd.storage.hub_devices import SqlHubDeviceRepository
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import SqlHubRepository
from tests.conftest import sas_token

HUB_HOST = "hub.example"
DPS_HOST = "dps.example"
API_VERSION = "?api-version=2021-04-12"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def builtin_hub(host_name: str) -> LinkedHub:
    policies = tuple(
        HubPolicy(name, new_key(), new_key(), rights)
        for name, rights in DEFAULT_HUB_POLICIES.items()
    )
    return LinkedHub(host_name=host_name, etag=new_key(), builtin_policies=policies)


@dataclass
class DpsStub:
    """Stands for the DPS app: answers 299 and remembers what it was given."""

    scopes: list[Scope] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 299, "headers": []})
            await send({"type": "http.response.body", "body": b"dps"})


@dataclass
class BuiltinHub:
    """The hub app behind the host dispatch; ``client`` addresses the hub by default."""

    hub: LinkedHub
    service: HubRegistryService
    hubs: SqlHubRepository
    hub_app: HubApiApp
    app: HostDispatch
    dps: DpsStub
    client: httpx.AsyncClient

    def key(self, policy: str = OWNER_HUB_POLICY) -> str:
        found = self.hub.policy(policy)
        assert found is not None
        return found.primary_key

    def auth(
        self, policy: str = OWNER_HUB_POLICY, *, encode: bool = True, audience: str = HUB_HOST
    ) -> dict[str, str]:
        return {"Authorization": sas_token(audience, policy, self.key(policy), encode=encode)}

    async def request(
        self, method: str, path: str, *, policy: str = OWNER_HUB_POLICY, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.auth(policy), **kwargs.pop("headers", {})}
        return await self.client.request(method, path + API_VERSION, headers=headers, **kwargs)

    async def put_device(self, device_id: str, body: Any = None, **headers: str) -> httpx.Response:
        from urllib.parse import quote

        payload = {"deviceId": device_id} if body is None else body
        return await self.request(
            "PUT", f"/devices/{quote(device_id, safe='')}", json=payload, headers=headers
        )


@pytest.fixture
async def builtin(tmp_path: Path) -> AsyncIterator[BuiltinHub]:
    url = f"sqlite:///{tmp_path / 'dpsd.db'}"
    engine = create_engine(url)
    await migrate(engine)
    executor = create_executor(url, engine)
    try:
        hubs = SqlHubRepository(executor)
        hub = builtin_hub(HUB_HOST)
        assert await hubs.add(hub)
        service = HubRegistryService(
            hubs, SqlHubDeviceRepository(executor), SystemClock(), SystemEntropy()
        )
        hub_app = build_hub_app(service, SystemClock().now)
        dps = DpsStub()
        app = HostDispatch(
            dps, hub_app, HubLookup(service.served_hub), [DPS_HOST, "localhost", "127.0.0.1"]
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{HUB_HOST}") as client:
            yield BuiltinHub(hub, service, hubs, hub_app, app, dps, client)
    finally:
        await executor.close()
        await engine.dispose()
