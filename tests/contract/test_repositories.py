"""One contract for every store: in-memory, SQLite and PostgreSQL behave alike."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.domain.enrollment import IndividualEnrollment, ProvisioningStatus
from dpsd.domain.etag import new_etag
from dpsd.domain.hub import LinkedHub
from dpsd.domain.query import ENROLLMENT_QUERY_FIELDS, parse_query
from dpsd.domain.registration import (
    DeviceRegistrationState,
    RegistrationOperation,
    RegistrationStatus,
)
from dpsd.domain.sas import ALL_RIGHTS, AccessRights, SharedAccessPolicy
from dpsd.storage import codec
from dpsd.storage import migrate as migrate_module
from dpsd.storage.codec import timestamp_text as codec_timestamp
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import create_executor
from dpsd.storage.memory import (
    InMemoryEnrollmentRepository,
    InMemoryHubRepository,
    InMemoryRegistrationStateRepository,
)
from dpsd.storage.migrate import migrate, migrations_config
from dpsd.storage.sql import (
    ENROLLMENTS,
    DocumentKind,
    SqlEnrollmentRepository,
    SqlHubRepository,
    SqlInstanceRepository,
    SqlRegistrationStateRepository,
    document_around_created,
)
from tests.contract.databases import sql_database
from tests.factories import enrollment, with_settings, x509_enrollment


@dataclass
class Store:
    enrollments: InMemoryEnrollmentRepository | SqlEnrollmentRepository
    states: InMemoryRegistrationStateRepository | SqlRegistrationStateRepository
    engine: AsyncEngine | None
    hubs: InMemoryHubRepository | SqlHubRepository


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        hubs = InMemoryHubRepository()
        yield Store(
            InMemoryEnrollmentRepository(hubs), InMemoryRegistrationStateRepository(), None, hubs
        )
        return
    async with sql_database(request, tmp_path) as (url, engine):
        executor = create_executor(url, engine)
        try:
            yield Store(
                SqlEnrollmentRepository(executor),
                SqlRegistrationStateRepository(executor),
                engine,
                SqlHubRepository(executor),
            )
        finally:
            await executor.close()


async def test_a_record_comes_back_as_it_was_stored(store: Store) -> None:
    for record in (enrollment("plain-1"), x509_enrollment("x509-1")):
        assert await store.enrollments.add(record)
        assert await store.enrollments.get(record.registration_id) == record


async def test_ids_are_case_insensitive(store: Store) -> None:
    assert await store.enrollments.add(enrollment("Device-A"))
    assert not await store.enrollments.add(enrollment("device-a"))
    found = await store.enrollments.get("DEVICE-a")
    assert found is not None
    assert found.registration_id == "Device-A"


async def test_replace_only_at_the_expected_etag(store: Store) -> None:
    first = enrollment("device-1")
    await store.enrollments.add(first)
    second = replace(first, etag=new_etag(b"2" * 16), device_id="renamed")
    assert not await store.enrollments.replace(second, expected_etag="stale")
    assert await store.enrollments.replace(second, expected_etag=first.etag)
    assert await store.enrollments.get("device-1") == second
    assert not await store.enrollments.replace(enrollment("absent"), expected_etag=first.etag)


async def test_overwrite_keeps_the_creation_time_and_honours_the_etag(store: Store) -> None:
    first = x509_enrollment("device-1")
    await store.enrollments.add(first)
    later = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    second = replace(
        enrollment("DEVICE-1", device_id="renamed"),
        etag=new_etag(b"2" * 16),
        created=later,
        last_updated=later,
    )
    assert await store.enrollments.overwrite(second, expected_etag="stale") is None
    assert await store.enrollments.get("device-1") == first
    assert await store.enrollments.overwrite(second, expected_etag=first.etag) == first.created
    kept = replace(second, created=first.created)
    assert await store.enrollments.get("device-1") == kept
    # At whatever etag is stored; and a changed provisioning status is written too.
    third = with_settings(
        replace(second, etag=new_etag(b"3" * 16)), provisioning_status=ProvisioningStatus.DISABLED
    )
    assert await store.enrollments.overwrite(third, expected_etag=None) == first.created
    assert await store.enrollments.get("device-1") == replace(third, created=first.created)
    disabled = parse_query(
        "SELECT * WHERE provisioningStatus = 'disabled'", ENROLLMENT_QUERY_FIELDS
    )
    assert [
        r.registration_id
        for r in await store.enrollments.query(disabled.where, after=None, limit=10)
    ] == ["DEVICE-1"]
    assert await store.enrollments.overwrite(enrollment("absent"), expected_etag=None) is None
    assert await store.enrollments.get("absent") is None


async def test_overwrite_keeps_documents_whole_whatever_they_hold(store: Store) -> None:
    first = enrollment("device-1")
    await store.enrollments.add(first)
    created = codec_timestamp(first.created)
    tricky = {"created": created, '"created":"': f'"created":"{created}"', "n": [1, None]}
    second = replace(
        first,
        etag=new_etag(b"2" * 16),
        optional_device_information=tricky,
        settings=replace(first.settings, initial_twin={"tags": tricky}),
    )
    assert await store.enrollments.overwrite(second, expected_etag=first.etag) == first.created
    assert await store.enrollments.get("device-1") == second


async def test_writes_that_name_hubs_happen_only_when_all_are_linked(store: Store) -> None:
    await store.hubs.add(LinkedHub(host_name="Hub-A.example", etag="e"))
    await store.hubs.add(LinkedHub(host_name="hub-b.example", etag="e"))
    first = enrollment("device-1")
    both = ["hub-a.example", "HUB-B.example", "hub-a.EXAMPLE"]
    assert await store.enrollments.add_linked(first, hubs=[*both, "hub-c.example"]) is None
    assert await store.enrollments.get("device-1") is None
    assert await store.enrollments.add_linked(first, hubs=both) is True
    assert await store.enrollments.add_linked(first, hubs=both) is False
    assert await store.enrollments.add_linked(first, hubs=["hub-c.example"]) is None
    assert await store.enrollments.add_linked(enrollment("device-2"), hubs=[]) is True
    second = replace(first, etag=new_etag(b"2" * 16), device_id="second")
    missing = ["hub-c.example"]
    assert await store.enrollments.overwrite(second, expected_etag=None, hubs=missing) is None
    assert await store.enrollments.get("device-1") == first
    assert await store.enrollments.overwrite(second, expected_etag=None, hubs=both) == (
        first.created
    )
    assert await store.enrollments.get("device-1") == second
    many = [f"hub-{index}.example" for index in range(12)]
    for name in many:
        await store.hubs.add(LinkedHub(host_name=name, etag="e"))
    third = replace(second, etag=new_etag(b"3" * 16))
    assert await store.enrollments.overwrite(third, expected_etag=second.etag, hubs=many) == (
        first.created
    )
    assert await store.enrollments.add_linked(enrollment("device-3"), hubs=many) is True
    assert await store.enrollments.add_linked(enrollment("device-4"), hubs=[*many, "x.y"]) is None


async def test_records_naming_a_hub_are_found_in_any_case_and_paged(store: Store) -> None:
    named = {
        "a-listed": {"iot_hubs": ("hub-1.example", "hub-2.example")},
        "b-upper": {"iot_hubs": ("HUB-1.Example",)},
        "c-single": {"iot_hub_host_name": "hub-1.example"},
        "d-longer": {"iot_hubs": ("hub-1.example.net", "hub-10.example")},
        "e-none": {},
    }
    for registration_id, settings in named.items():
        assert await store.enrollments.add(with_settings(enrollment(registration_id), **settings))

    async def naming(after: str | None, limit: int) -> list[str]:
        found = await store.enrollments.naming_hub("Hub-1.example", after=after, limit=limit)
        return [record.registration_id for record in found]

    assert await naming(None, 10) == ["a-listed", "b-upper", "c-single"]
    assert await naming(None, 2) == ["a-listed", "b-upper"]
    assert await naming("b-upper", 2) == ["c-single"]
    found = await store.enrollments.naming_hub("hub_1.example", after=None, limit=10)
    assert found == []  # LIKE's wildcards stand for themselves


async def test_delete_honours_the_etag(store: Store) -> None:
    record = enrollment("device-1")
    await store.enrollments.add(record)
    assert not await store.enrollments.delete("device-1", expected_etag="stale")
    assert await store.enrollments.get("device-1") is not None
    assert await store.enrollments.delete("device-1", expected_etag=record.etag)
    assert not await store.enrollments.delete("device-1", expected_etag=None)
    await store.enrollments.add(enrollment("device-2"))
    assert await store.enrollments.delete("DEVICE-2", expected_etag=None)


async def test_only_one_of_concurrent_conditional_writes_wins(store: Store) -> None:
    record = enrollment("contended")
    await store.enrollments.add(record)
    contenders = [
        replace(record, etag=new_etag(bytes([n]) * 16), device_id=f"writer-{n}") for n in range(8)
    ]
    results = await asyncio.gather(
        *(store.enrollments.replace(c, expected_etag=record.etag) for c in contenders)
    )
    assert sum(results) == 1
    winner = contenders[results.index(True)]
    assert await store.enrollments.get("contended") == winner


async def _ids(store: Store, text: str, *, after: str | None = None, limit: int = 100) -> list[str]:
    where = parse_query(text, ENROLLMENT_QUERY_FIELDS).where
    found = await store.enrollments.query(where, after=after, limit=limit)
    return [record.registration_id for record in found]


async def test_query_filters_and_pages_in_id_order(store: Store) -> None:
    await store.enrollments.add(x509_enrollment("c-x509"))
    await store.enrollments.add(enrollment("b-plain", device_id="dev-b"))
    await store.enrollments.add(
        with_settings(enrollment("a-off"), provisioning_status=ProvisioningStatus.DISABLED)
    )
    assert await _ids(store, "SELECT *") == ["a-off", "b-plain", "c-x509"]
    assert await _ids(store, "SELECT *", after="a-off", limit=1) == ["b-plain"]
    disabled = "SELECT * WHERE provisioningStatus = 'disabled'"
    assert await _ids(store, disabled) == ["a-off", "c-x509"]
    assert await _ids(store, "select * where attestation.type = 'x509'") == ["c-x509"]
    assert await _ids(store, "SELECT * WHERE deviceId = 'dev-b'") == ["b-plain"]
    assert await _ids(store, "SELECT * WHERE deviceId = null") == ["a-off", "c-x509"]
    assert await _ids(store, "SELECT * WHERE iotHubHostName = 'hub-a.example'") == ["c-x509"]
    assert await _ids(store, "SELECT * WHERE capabilities.iotEdge = true") == ["c-x509"]
    assert await _ids(store, "SELECT * WHERE registrationId = 'B-PLAIN'") == ["b-plain"]
    either = "SELECT * WHERE deviceId = 'dev-b' OR NOT (provisioningStatus != 'disabled')"
    assert await _ids(store, either) == ["a-off", "b-plain", "c-x509"]
    both = "SELECT * WHERE provisioningStatus = 'disabled' AND allocationPolicy = 'static'"
    assert await _ids(store, both) == ["c-x509"]


STATE_MOMENT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def assigned_state(**extra: Any) -> DeviceRegistrationState:
    """device-1, assigned to hub-a.example."""
    return DeviceRegistrationState(
        registration_id="device-1",
        status=RegistrationStatus.ASSIGNED,
        etag=new_etag(b"s" * 16),
        created=STATE_MOMENT,
        last_updated=STATE_MOMENT,
        assigned_hub="hub-a.example",
        device_id="device-1",
        **extra,
    )


async def test_registration_states_replace_earlier_ones(store: Store) -> None:
    state = assigned_state(payload={"model": "x"})
    assert await store.states.get("device-1") is None
    await store.states.put(state)
    await store.states.put(replace(state, status=RegistrationStatus.FAILED, error_code=400209))
    found = await store.states.get("DEVICE-1")
    assert found is not None
    assert found.status == RegistrationStatus.FAILED
    assert found.error_code == 400209


async def test_a_finished_operation_is_kept_with_the_state_it_left(store: Store) -> None:
    state = assigned_state()
    operation = RegistrationOperation(
        operation_id="4.0123456789abcdef.op-1",
        registration_id="device-1",
        status=RegistrationStatus.ASSIGNED,
        created=STATE_MOMENT,
        last_updated=STATE_MOMENT,
        state=state,
        attestation_type="symmetricKey",
        authentication_key="a2V5",
    )
    await store.states.record_finished(operation)
    assert await store.states.get("device-1") == state
    assert await store.states.finished_operation("DEVICE-1", operation.operation_id) == operation
    assert await store.states.finished_operation("device-1", "4.0123456789abcdef.op-2") is None
    assert await store.states.finished_operation("device-2", operation.operation_id) is None

    # The next operation takes the place of the first.
    later = replace(operation, operation_id="4.0123456789abcdef.op-2", authentication_key=None)
    await store.states.record_finished(later)
    assert await store.states.finished_operation("device-1", operation.operation_id) is None
    assert await store.states.finished_operation("device-1", later.operation_id) == later

    # A state written by itself, or deleted, was left by no operation.
    await store.states.put(replace(state, status=RegistrationStatus.FAILED))
    assert await store.states.finished_operation("device-1", later.operation_id) is None
    await store.states.record_finished(later)
    assert await store.states.delete("device-1", expected_etag=None)
    assert await store.states.finished_operation("device-1", later.operation_id) is None
    assert await store.states.add(state)
    assert await store.states.finished_operation("device-1", later.operation_id) is None


def _policy(name: str, rights: AccessRights) -> SharedAccessPolicy:
    key = base64.b64encode(os.urandom(32)).decode()
    return SharedAccessPolicy(name=name, primary_key=key, secondary_key=key, rights=rights)


async def test_the_first_instance_identity_stays(store: Store) -> None:
    if store.engine is None:
        pytest.skip("the instance identity lives only in SQL stores")
    repository = SqlInstanceRepository(store.engine)
    first = [_policy("owner", ALL_RIGHTS), _policy("reader", AccessRights.ENROLLMENT_READ)]
    scope, policies = await repository.ensure("0ne00000001", first)
    assert scope == "0ne00000001"
    assert sorted(policies, key=lambda p: p.name) == first
    again = await repository.ensure("0ne00000002", [_policy("owner", ALL_RIGHTS)])
    assert again[0] == "0ne00000001"
    assert sorted(again[1], key=lambda p: p.name) == first


async def test_migrations_run_again_without_change(store: Store) -> None:
    if store.engine is None:
        pytest.skip("only SQL stores have a schema")
    await migrate(store.engine)
    async with store.engine.connect() as connection:
        version = (
            await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        ).scalar_one()
    head = ScriptDirectory.from_config(migrations_config()).get_current_head()
    assert version == head
    assert head == migrate_module.NEWEST_REVISION  # a start finds nothing to do without Alembic


@pytest.mark.postgres
async def test_instances_starting_together_migrate_once(postgres_server: str) -> None:
    engines = [create_engine(postgres_server) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Bring the schema back down to ``revision``."""

    def run(connection: sa.Connection) -> None:
        config = migrations_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def check_creation_times_filled(
    engine: AsyncEngine, repository: Any, kind: DocumentKind[Any], records: list[Any]
) -> None:
    """Store ``records`` as a schema without the ``created`` column of ``kind`` held them,
    migrate, and check that the column was filled: overwrites keep the creation time."""
    rows = [kind.row(record) for record in records]
    for row in rows:
        row.pop("created")
    old_table = sa.table(kind.table.name, *(sa.column(name) for name in rows[0]))
    async with engine.begin() as connection:
        await connection.execute(old_table.insert(), rows)
    await migrate(engine)
    for record in records:
        record_id = kind.record_id(record)
        assert await repository.get(record_id) == record
        later = replace(record, etag=new_etag(b"9" * 16), created=datetime.now(UTC))
        assert await repository.overwrite(later, expected_etag=record.etag) == record.created
        assert await repository.get(record_id) == replace(later, created=record.created)


async def test_migration_0006_fills_the_creation_time_of_stored_enrollments(store: Store) -> None:
    if store.engine is None:
        pytest.skip("only SQL stores have a schema")
    await downgrade(store.engine, "0005")
    records = [enrollment("old-1"), x509_enrollment("old-2")]
    await check_creation_times_filled(store.engine, store.enrollments, ENROLLMENTS, records)


@pytest.mark.parametrize(
    "record",
    [
        enrollment("plain-1"),
        x509_enrollment("x509-1"),
        replace(enrollment("odd-1"), created=datetime(2026, 1, 1, tzinfo=UTC)),
        replace(enrollment("odd-2"), optional_device_information={"created": "x", "a": [None]}),
    ],
)
def test_a_document_cut_around_its_creation_time_is_the_whole_document(
    record: IndividualEnrollment,
) -> None:
    head, tail = document_around_created(record)
    assert head + codec_timestamp(record.created) + tail == codec.encode(record)
