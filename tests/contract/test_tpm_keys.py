"""The contract of the TPM key stores (challenges and hub identity keys) on every store: the
in-memory reference, SQLite and PostgreSQL. Two executors on one database stand for two dpsd
processes sharing the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dpsd.domain.tpm_keys import TpmChallenge, TpmHubKey
from dpsd.storage import memory, sql
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import create_executor
from dpsd.storage.migrate import migrate
from tests.contract.databases import clean, sql_database
from tests.contract.test_repositories import downgrade

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass
class TpmStores:
    challenges: Any
    hub_keys: Any
    other_process: Any  # the challenges seen through another executor (memory: the same)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TpmStores]:
    if request.param == "memory":
        challenges = memory.InMemoryTpmChallengeRepository()
        yield TpmStores(challenges, memory.InMemoryTpmHubKeyRepository(), challenges)
        return
    async with sql_database(request, tmp_path) as (url, engine):
        first, second = create_executor(url, engine), create_executor(url, engine)
        try:
            yield TpmStores(
                sql.SqlTpmChallengeRepository(first),
                sql.SqlTpmHubKeyRepository(first),
                sql.SqlTpmChallengeRepository(second),
            )
        finally:
            await first.close()
            await second.close()


def challenge(registration_id: str = "Device-1", etag: str = "c1", **changes: Any) -> TpmChallenge:
    record = TpmChallenge(registration_id, etag, "RUs=", "U1JL", "S0VZ", NOW + timedelta(minutes=5))
    return replace(record, **changes)


async def test_a_challenge_is_read_back_by_any_process_in_any_case(stores: TpmStores) -> None:
    assert await stores.challenges.get("device-1") is None
    await stores.challenges.put(challenge())
    assert await stores.other_process.get("DEVICE-1") == challenge()


async def test_a_new_challenge_replaces_the_last_and_stops_holding_it_longer(
    stores: TpmStores,
) -> None:
    first = challenge()
    await stores.challenges.put(first)
    await stores.other_process.put(challenge(etag="c2", key="TkVX"))
    held = replace(first, expires=NOW + timedelta(hours=1))
    assert not await stores.challenges.replace(held, expected_etag=first.etag)
    assert (await stores.challenges.get("device-1")).key == "TkVX"


async def test_a_verified_challenge_is_held_until_its_token_expires(stores: TpmStores) -> None:
    first = challenge()
    await stores.challenges.put(first)
    held = replace(first, expires=NOW + timedelta(hours=1))
    assert await stores.other_process.replace(held, expected_etag=first.etag)
    await stores.challenges.delete_expired(NOW + timedelta(minutes=30))
    assert await stores.challenges.get("device-1") == held
    await stores.challenges.delete_expired(NOW + timedelta(hours=2))
    assert await stores.challenges.get("device-1") is None


async def test_expired_challenges_go_and_others_stay(stores: TpmStores) -> None:
    await stores.challenges.put(challenge("old", expires=NOW - timedelta(seconds=1)))
    await stores.challenges.put(challenge("new"))
    await stores.challenges.delete_expired(NOW)
    assert await stores.challenges.get("old") is None
    assert await stores.challenges.get("new") is not None


async def test_a_challenge_deleted_at_its_etag_only(stores: TpmStores) -> None:
    await stores.challenges.put(challenge())
    assert not await stores.challenges.delete("device-1", expected_etag="other")
    assert await stores.challenges.delete("device-1", expected_etag="c1")
    assert await stores.challenges.get("device-1") is None


async def test_hub_keys_are_kept_per_registration(stores: TpmStores) -> None:
    key = TpmHubKey("Device-1", "e1", "ZmluZ2VycHJpbnQ=", "SFVC", "U0VD")
    await stores.hub_keys.put(key)
    assert await stores.hub_keys.get("device-1") == key
    newer = replace(key, etag="e2", endorsement_key="b3RoZXI=", key="TkVX")
    await stores.hub_keys.put(newer)
    assert await stores.hub_keys.get("DEVICE-1") == newer
    assert await stores.hub_keys.get("device-2") is None


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_the_tpm_tables_migrate_down_and_up(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'm.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_server")
    )
    engine = create_engine(url)
    try:
        await migrate(engine)
        await clean(engine)
        await downgrade(engine, "0008")
        await migrate(engine)
        executor = create_executor(url, engine)
        repository = sql.SqlTpmChallengeRepository(executor)
        await repository.put(challenge())
        assert await repository.get("device-1") == challenge()
        await executor.close()
    finally:
        await engine.dispose()
