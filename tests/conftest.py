"""Shared fixtures: a real store on SQLite and PostgreSQL, the service API in-process,
and SAS tokens signed the way the Azure SDKs sign them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from dpsd.app import Runtime, build_runtime
from dpsd.settings import Settings

POSTGRES_URL = os.environ.get("DPSD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
API = "?api-version=2021-10-01"
SPEC = Path(__file__).resolve().parents[1] / "spec"
"""The DPS data-plane spec the conformance tests read (copies, spec/README.md says whence)."""


def sas_token(
    audience: str, key_name: str | None, key: str, *, ttl: int = 3600, encode: bool = True
) -> str:
    """A SharedAccessSignature as the SDKs write it: ``encode`` URL-encodes sr (Python,
    C#); Node sends it raw. Either way the signature covers sr as sent."""
    resource = quote(audience, safe="") if encode else audience
    expiry = int(time.time()) + ttl
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
    signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
    token = f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}"
    return token + (f"&skn={key_name}" if key_name else "")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end)."""
    with scratch_postgres_database() as url:
        yield url


@contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database of its own (dropped at the end), for tests whose records
    would get in the way of others' on the session's database; skips when PostgreSQL is not
    reachable, unless CI is set."""
    import asyncpg

    name = f"dpsd_test_{uuid.uuid4().hex[:12]}"

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def admin(statement: str) -> None:
        # In a thread of its own: this fixture may be first asked for inside a running loop.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, run(statement)).result()

    try:
        admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {error}")
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ServiceApi:
    """The service API of a real runtime, reached in-process."""

    runtime: Runtime
    client: httpx.AsyncClient

    @property
    def owner_key(self) -> str:
        return self.runtime.policies["provisioningserviceowner"].primary_key

    def auth(self, policy: str = "provisioningserviceowner") -> dict[str, str]:
        key = self.runtime.policies[policy].primary_key
        return {"Authorization": sas_token("localhost", policy, key)}

    async def put(self, path: str, body: object, **headers: str) -> httpx.Response:
        return await self.client.put(path + API, json=body, headers={**self.auth(), **headers})

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path + API, headers=self.auth())

    async def delete(self, path: str, **headers: str) -> httpx.Response:
        return await self.client.delete(path + API, headers={**self.auth(), **headers})

    async def post(self, path: str, body: object | None = None, **headers: str) -> httpx.Response:
        if body is None:
            return await self.client.post(path + API, headers={**self.auth(), **headers})
        return await self.client.post(path + API, json=body, headers={**self.auth(), **headers})


@pytest.fixture
async def service_api(tmp_path: Path) -> AsyncIterator[ServiceApi]:
    settings = Settings(data_dir=tmp_path / "data")
    async with build_runtime(settings) as runtime:
        transport = httpx.ASGITransport(app=runtime.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as client:
            yield ServiceApi(runtime, client)
