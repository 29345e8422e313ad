"""Repositories on SQLAlchemy Core, the same code for SQLite and PostgreSQL.

Every record kind is a JSON document keyed by its case-folded id, plus the columns that
queries filter on. Conditional writes are single statements (``UPDATE ... WHERE etag =
:expected``), so an etag-guarded write is atomic on both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.domain.ca_certificate import CACertificate
from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.hub import LinkedHub
from dpsd.domain.ids import id_key
from dpsd.domain.query import BooleanOp, Comparison, Condition, Not
from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.domain.sas import SharedAccessPolicy, format_rights, parse_rights
from dpsd.storage import codec
from dpsd.storage.executor import DuplicateKey, Executor
from dpsd.storage.schema import (
    access_policies,
    ca_certificates,
    enrollment_groups,
    enrollments,
    instance,
    linked_hubs,
    registration_operations,
    registration_states,
)


class Versioned(Protocol):
    @property
    def etag(self) -> str: ...


R = TypeVar("R", bound=Versioned)


@dataclass(frozen=True, slots=True)
class DocumentKind(Generic[R]):
    """How one kind of record maps onto its table."""

    table: sa.Table
    record_id: Callable[[R], str]
    columns: Callable[[R], dict[str, Any]]
    decode: Callable[[str], R]
    query_columns: Mapping[str, sa.Column[Any]]

    def row(self, record: R) -> dict[str, Any]:
        return {
            "id_key": id_key(self.record_id(record)),
            "etag": record.etag,
            "document": codec.encode(record),
            **self.columns(record),
        }


def compile_condition(
    condition: Condition, columns: Mapping[str, sa.Column[Any]]
) -> sa.ColumnElement[bool]:
    match condition:
        case Comparison(field=field, operator=operator, value=value):
            column = columns[field]
            if column.name == "id_key" and isinstance(value, str):
                value = id_key(value)
            if value is None:
                return column.is_(None) if operator == "=" else column.is_not(None)
            compared: Any = value
            if column.name == "attestation_type":
                # written into the SQL, so that the planner can use the partial index of X.509
                # enrollments; the value is one of the domain's attestation types
                compared = sa.literal(value, literal_execute=True)
            comparison: sa.ColumnElement[bool] = (
                column == compared if operator == "=" else column != compared
            )
            return comparison
        case Not(operand=operand):
            return sa.not_(compile_condition(operand, columns))
        case BooleanOp(operator="and", operands=operands):
            return sa.and_(*(compile_condition(operand, columns) for operand in operands))
        case BooleanOp(operands=operands):
            return sa.or_(*(compile_condition(operand, columns) for operand in operands))


class SqlDocumentRepository(Generic[R]):
    """The point statements are built once; SQLAlchemy caches their compiled form."""

    def __init__(self, executor: Executor, kind: DocumentKind[R]) -> None:
        self._executor = executor
        self._kind = kind
        table = self._table = kind.table
        columns = [column.name for column in table.columns]
        key: sa.BindParameter[str] = sa.bindparam("key")
        etag: sa.BindParameter[str] = sa.bindparam("expected")
        prepare = executor.prepare
        self._get = prepare(sa.select(table.c.document).where(table.c.id_key == key))
        self._insert = prepare(table.insert(), columns)
        self._replace = prepare(
            table.update().where(table.c.id_key == key).where(table.c.etag == etag),
            [name for name in columns if name != "id_key"],
        )
        self._delete = prepare(table.delete().where(table.c.id_key == key))
        self._delete_at = prepare(
            table.delete().where(table.c.id_key == key).where(table.c.etag == etag)
        )
        upsert = (sqlite_insert if executor.dialect == "sqlite" else postgresql_insert)(table)
        self._upsert = prepare(
            upsert.on_conflict_do_update(
                index_elements=["id_key"],
                set_={name: upsert.excluded[name] for name in columns if name != "id_key"},
            ),
            columns,
        )

    async def get(self, record_id: str) -> R | None:
        document = await self._executor.scalar(self._get, {"key": id_key(record_id)})
        return None if document is None else self._kind.decode(document)

    async def add(self, record: R) -> bool:
        try:
            await self._executor.write(self._insert, self._kind.row(record))
        except DuplicateKey:
            return False
        return True

    async def replace(self, record: R, *, expected_etag: str) -> bool:
        row = self._kind.row(record)
        row["key"] = row.pop("id_key")
        row["expected"] = expected_etag
        return await self._executor.write(self._replace, row) == 1

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool:
        key = id_key(record_id)
        if expected_etag is None:
            return await self._executor.write(self._delete, {"key": key}) == 1
        params = {"key": key, "expected": expected_etag}
        return await self._executor.write(self._delete_at, params) == 1

    async def put(self, record: R) -> None:
        """Insert, or replace whatever is stored under the record's id."""
        await self._executor.write(self._upsert, self._kind.row(record))

    async def query(self, where: Condition | None, *, after: str | None, limit: int) -> list[R]:
        filters = [] if where is None else [compile_condition(where, self._kind.query_columns)]
        return await self._select(filters, after=after, limit=limit)

    async def _select(
        self, filters: list[sa.ColumnElement[bool]], *, after: str | None, limit: int
    ) -> list[R]:
        statement = sa.select(self._table.c.document).order_by(self._table.c.id_key).limit(limit)
        for condition in filters:
            statement = statement.where(condition)
        if after is not None:
            statement = statement.where(self._table.c.id_key > after)
        documents = await self._executor.scalars(statement)
        return [self._kind.decode(document) for document in documents]


def _settings_columns(settings: Any) -> dict[str, Any]:
    return {
        "provisioning_status": settings.provisioning_status.value,
        "iot_hub_host_name": settings.iot_hub_host_name,
        "attestation_type": settings.attestation.type.value,
        "allocation_policy": settings.allocation_policy.value
        if settings.allocation_policy
        else None,
        "iot_edge": settings.capabilities.iot_edge,
    }


def _settings_query_columns(table: sa.Table) -> dict[str, sa.Column[Any]]:
    return {
        "provisioningStatus": table.c.provisioning_status,
        "iotHubHostName": table.c.iot_hub_host_name,
        "attestation.type": table.c.attestation_type,
        "allocationPolicy": table.c.allocation_policy,
        "capabilities.iotEdge": table.c.iot_edge,
    }


ENROLLMENTS: DocumentKind[IndividualEnrollment] = DocumentKind(
    table=enrollments,
    record_id=lambda record: record.registration_id,
    columns=lambda record: {
        "registration_id": record.registration_id,
        "device_id": record.device_id,
        **_settings_columns(record.settings),
    },
    decode=codec.decoder(IndividualEnrollment),
    query_columns={
        "registrationId": enrollments.c.id_key,
        "deviceId": enrollments.c.device_id,
        **_settings_query_columns(enrollments),
    },
)

ENROLLMENT_GROUPS: DocumentKind[EnrollmentGroup] = DocumentKind(
    table=enrollment_groups,
    record_id=lambda record: record.enrollment_group_id,
    columns=lambda record: {
        "enrollment_group_id": record.enrollment_group_id,
        **_settings_columns(record.settings),
    },
    decode=codec.decoder(EnrollmentGroup),
    query_columns={
        "enrollmentGroupId": enrollment_groups.c.id_key,
        **_settings_query_columns(enrollment_groups),
    },
)

REGISTRATION_STATES: DocumentKind[DeviceRegistrationState] = DocumentKind(
    table=registration_states,
    record_id=lambda record: record.registration_id,
    columns=lambda record: {
        "registration_id": record.registration_id,
        "status": record.status.value,
        "group_key": None
        if record.enrollment_group_id is None
        else id_key(record.enrollment_group_id),
    },
    decode=codec.decoder(DeviceRegistrationState),
    query_columns={},
)

CA_CERTIFICATES: DocumentKind[CACertificate] = DocumentKind(
    table=ca_certificates,
    record_id=lambda record: record.name,
    columns=lambda record: {"name": record.name},
    decode=codec.decoder(CACertificate),
    query_columns={},
)


LINKED_HUBS: DocumentKind[LinkedHub] = DocumentKind(
    table=linked_hubs,
    record_id=lambda record: record.host_name,
    columns=lambda record: {"host_name": record.host_name},
    decode=codec.decoder(LinkedHub),
    query_columns={},
)

REGISTRATION_OPERATIONS: DocumentKind[RegistrationOperation] = DocumentKind(
    table=registration_operations,
    record_id=lambda record: record.operation_id,
    columns=lambda record: {
        "registration_id": record.registration_id,
        "created_at": record.created.timestamp(),
    },
    decode=codec.decoder(RegistrationOperation),
    query_columns={},
)


class SqlEnrollmentRepository(SqlDocumentRepository[IndividualEnrollment]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, ENROLLMENTS)


class SqlEnrollmentGroupRepository(SqlDocumentRepository[EnrollmentGroup]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, ENROLLMENT_GROUPS)


class SqlCertificateRepository(SqlDocumentRepository[CACertificate]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, CA_CERTIFICATES)

    async def list(self) -> list[CACertificate]:
        return await self._select([], after=None, limit=1_000_000)


class SqlRegistrationStateRepository(SqlDocumentRepository[DeviceRegistrationState]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, REGISTRATION_STATES)

    async def query_group(
        self, enrollment_group_id: str, *, after: str | None, limit: int
    ) -> list[DeviceRegistrationState]:
        belongs = registration_states.c.group_key == id_key(enrollment_group_id)
        return await self._select([belongs], after=after, limit=limit)


class SqlHubRepository(SqlDocumentRepository[LinkedHub]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, LINKED_HUBS)

    async def list(self) -> list[LinkedHub]:
        return await self._select([], after=None, limit=1_000_000)


class SqlOperationRepository(SqlDocumentRepository[RegistrationOperation]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, REGISTRATION_OPERATIONS)

    async def save(self, operation: RegistrationOperation) -> None:
        """Record an operation's latest status (operations change only forward)."""
        await self.put(operation)

    async def delete_older_than(self, moment: datetime) -> None:
        await self._executor.write(
            registration_operations.delete().where(
                registration_operations.c.created_at < moment.timestamp()
            )
        )


class SqlInstanceRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ensure(
        self, id_scope: str, policies: list[SharedAccessPolicy]
    ) -> tuple[str, list[SharedAccessPolicy]]:
        try:
            async with self._engine.begin() as connection:
                await connection.execute(instance.insert().values(name="id_scope", value=id_scope))
                await connection.execute(
                    access_policies.insert(),
                    [
                        {
                            "name": policy.name,
                            "primary_key": policy.primary_key,
                            "secondary_key": policy.secondary_key,
                            "rights": format_rights(policy.rights),
                        }
                        for policy in policies
                    ],
                )
        except IntegrityError:
            pass  # another dpsd process on this store initialised it first
        async with self._engine.connect() as connection:
            stored_scope = (
                await connection.execute(
                    sa.select(instance.c.value).where(instance.c.name == "id_scope")
                )
            ).scalar_one()
            rows = (await connection.execute(sa.select(access_policies))).all()
        return stored_scope, [
            SharedAccessPolicy(
                name=row.name,
                primary_key=row.primary_key,
                secondary_key=row.secondary_key,
                rights=parse_rights(row.rights),
            )
            for row in rows
        ]
