"""Repositories on SQLAlchemy Core, the same code for SQLite and PostgreSQL.

Conditional writes are single statements (``UPDATE ... WHERE etag = :expected``), so an
etag-guarded write is atomic on both engines.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.ids import id_key
from dpsd.domain.query import BooleanOp, Comparison, Condition, Not
from dpsd.domain.registration import DeviceRegistrationState
from dpsd.domain.sas import SharedAccessPolicy, format_rights, parse_rights
from dpsd.storage import codec
from dpsd.storage.schema import access_policies, enrollments, instance, registration_states

_ENROLLMENT_COLUMNS: dict[str, sa.Column[Any]] = {
    "registrationId": enrollments.c.id_key,
    "deviceId": enrollments.c.device_id,
    "provisioningStatus": enrollments.c.provisioning_status,
    "iotHubHostName": enrollments.c.iot_hub_host_name,
    "attestation.type": enrollments.c.attestation_type,
    "allocationPolicy": enrollments.c.allocation_policy,
    "capabilities.iotEdge": enrollments.c.iot_edge,
}


def _enrollment_row(enrollment: IndividualEnrollment) -> dict[str, Any]:
    settings = enrollment.settings
    return {
        "id_key": id_key(enrollment.registration_id),
        "registration_id": enrollment.registration_id,
        "etag": enrollment.etag,
        "provisioning_status": settings.provisioning_status.value,
        "device_id": enrollment.device_id,
        "iot_hub_host_name": settings.iot_hub_host_name,
        "attestation_type": settings.attestation.type.value,
        "allocation_policy": settings.allocation_policy.value
        if settings.allocation_policy
        else None,
        "iot_edge": settings.capabilities.iot_edge,
        "document": codec.encode(enrollment),
    }


def compile_condition(condition: Condition) -> sa.ColumnElement[bool]:
    match condition:
        case Comparison(field=field, operator=operator, value=value):
            column = _ENROLLMENT_COLUMNS[field]
            if field == "registrationId" and isinstance(value, str):
                value = id_key(value)
            if value is None:
                return column.is_(None) if operator == "=" else column.is_not(None)
            return column == value if operator == "=" else column != value
        case Not(operand=operand):
            return sa.not_(compile_condition(operand))
        case BooleanOp(operator="and", operands=operands):
            return sa.and_(*(compile_condition(operand) for operand in operands))
        case BooleanOp(operands=operands):
            return sa.or_(*(compile_condition(operand) for operand in operands))


class SqlEnrollmentRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, registration_id: str) -> IndividualEnrollment | None:
        statement = sa.select(enrollments.c.document).where(
            enrollments.c.id_key == id_key(registration_id)
        )
        async with self._engine.connect() as connection:
            document = (await connection.execute(statement)).scalar_one_or_none()
        return None if document is None else codec.decode_enrollment(document)

    async def add(self, enrollment: IndividualEnrollment) -> bool:
        try:
            async with self._engine.begin() as connection:
                await connection.execute(enrollments.insert().values(_enrollment_row(enrollment)))
        except IntegrityError:
            return False
        return True

    async def replace(self, enrollment: IndividualEnrollment, *, expected_etag: str) -> bool:
        statement = (
            enrollments.update()
            .where(enrollments.c.id_key == id_key(enrollment.registration_id))
            .where(enrollments.c.etag == expected_etag)
            .values(_enrollment_row(enrollment))
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(statement)
        return result.rowcount == 1

    async def delete(self, registration_id: str, *, expected_etag: str | None) -> bool:
        statement = enrollments.delete().where(enrollments.c.id_key == id_key(registration_id))
        if expected_etag is not None:
            statement = statement.where(enrollments.c.etag == expected_etag)
        async with self._engine.begin() as connection:
            result = await connection.execute(statement)
        return result.rowcount == 1

    async def query(
        self, where: Condition | None, *, after: str | None, limit: int
    ) -> list[IndividualEnrollment]:
        statement = sa.select(enrollments.c.document).order_by(enrollments.c.id_key).limit(limit)
        if where is not None:
            statement = statement.where(compile_condition(where))
        if after is not None:
            statement = statement.where(enrollments.c.id_key > after)
        async with self._engine.connect() as connection:
            documents = (await connection.execute(statement)).scalars().all()
        return [codec.decode_enrollment(document) for document in documents]


class SqlRegistrationStateRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, registration_id: str) -> DeviceRegistrationState | None:
        statement = sa.select(registration_states.c.document).where(
            registration_states.c.id_key == id_key(registration_id)
        )
        async with self._engine.connect() as connection:
            document = (await connection.execute(statement)).scalar_one_or_none()
        return None if document is None else codec.decode_registration_state(document)

    async def put(self, state: DeviceRegistrationState) -> None:
        """Record a device's registration state, replacing an earlier one."""
        row = {
            "id_key": id_key(state.registration_id),
            "registration_id": state.registration_id,
            "etag": state.etag,
            "status": state.status.value,
            "document": codec.encode(state),
        }
        async with self._engine.begin() as connection:
            await connection.execute(
                registration_states.delete().where(registration_states.c.id_key == row["id_key"])
            )
            await connection.execute(registration_states.insert().values(row))


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
