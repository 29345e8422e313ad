"""Repositories on SQLAlchemy Core, the same code for SQLite and PostgreSQL.

Every record kind is a JSON document keyed by its case-folded id, plus the columns that
queries filter on. Conditional writes are single statements (``UPDATE ... WHERE etag =
:expected``), so an etag-guarded write is atomic on both engines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.domain.attestation import AttestationType
from dpsd.domain.ca_certificate import CACertificate
from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.hub import LinkedHub
from dpsd.domain.ids import id_key
from dpsd.domain.query import BooleanOp, Comparison, Condition, Not
from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.domain.sas import SharedAccessPolicy, format_rights, parse_rights
from dpsd.domain.tpm_keys import TpmChallenge, TpmHubKey
from dpsd.service.records import Dated
from dpsd.storage import codec
from dpsd.storage.executor import DuplicateKey, Executor, Prepared
from dpsd.storage.schema import (
    access_policies,
    ca_certificates,
    enrollment_groups,
    enrollments,
    instance,
    linked_hubs,
    registration_operations,
    registration_states,
    tpm_challenges,
    tpm_hub_keys,
)


class Versioned(Protocol):
    @property
    def etag(self) -> str: ...


R = TypeVar("R", bound=Versioned)
D = TypeVar("D", bound=Dated)


@dataclass(frozen=True, slots=True)
class DocumentKind(Generic[R]):
    """How one kind of record maps onto its table. ``created``: the text of the record's
    creation time, for kinds that keep it in a column of its own (SqlLinkedRepository)."""

    table: sa.Table
    record_id: Callable[[R], str]
    columns: Callable[[R], dict[str, Any]]
    decode: Callable[[str], R]
    query_columns: Mapping[str, sa.Column[Any]]
    created: Callable[[R], str] | None = None

    def row(self, record: R) -> dict[str, Any]:
        row = {
            "id_key": id_key(self.record_id(record)),
            "etag": record.etag,
            "document": codec.encode(record),
            **self.columns(record),
        }
        if self.created is not None:
            row["created"] = self.created(record)
        return row


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


_QUERIES_KEPT = 64  # prepared queries kept per repository (the service's own, mostly)


class SqlDocumentRepository(Generic[R]):
    """The point statements are built once, and so are the queries the service repeats
    (the list of linked hubs, the service API's queries of its clients): a query is prepared
    the first time its condition and limit are asked for, and kept (up to
    ``_QUERIES_KEPT`` of them), so that running it again skips building and compiling it."""

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
        self._upsert = dataclasses.replace(
            prepare(
                upsert.on_conflict_do_update(
                    index_elements=["id_key"],
                    set_={name: upsert.excluded[name] for name in columns if name != "id_key"},
                ),
                columns,
            ),
            repeatable=True,
        )
        self._queries: dict[tuple[Condition | None, bool, int], Prepared] = {}

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
        key = (where, after is not None, limit)
        prepared = self._queries.get(key)
        if prepared is None:
            filters = [] if where is None else [compile_condition(where, self._kind.query_columns)]
            prepared = self._executor.prepare(
                self._statement(
                    filters, sa.bindparam("after") if after is not None else None, limit
                )
            )
            if len(self._queries) < _QUERIES_KEPT:
                self._queries[key] = prepared
        params = None if after is None else {"after": after}
        documents = await self._executor.scalars(prepared, params)
        return [self._kind.decode(document) for document in documents]

    def _statement(
        self, filters: list[sa.ColumnElement[bool]], after: Any, limit: int
    ) -> sa.Select[tuple[str]]:
        statement = sa.select(self._table.c.document).order_by(self._table.c.id_key).limit(limit)
        for condition in filters:
            statement = statement.where(condition)
        if after is not None:
            statement = statement.where(self._table.c.id_key > after)
        return statement

    async def _select(
        self, filters: list[sa.ColumnElement[bool]], *, after: str | None, limit: int
    ) -> list[R]:
        documents = await self._executor.scalars(self._statement(filters, after, limit))
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


def _created_text(record: IndividualEnrollment | EnrollmentGroup) -> str:
    return codec.timestamp_text(record.created)


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
    created=_created_text,
)

ENROLLMENT_GROUPS: DocumentKind[EnrollmentGroup] = DocumentKind(
    table=enrollment_groups,
    record_id=lambda record: record.enrollment_group_id,
    columns=lambda record: {
        "enrollment_group_id": record.enrollment_group_id,
        **_settings_columns(record.settings),
    },
    decode=codec.shared_decoder(EnrollmentGroup),
    query_columns={
        "enrollmentGroupId": enrollment_groups.c.id_key,
        **_settings_query_columns(enrollment_groups),
    },
    created=_created_text,
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
        "operation": None,  # a state written by itself was left by no operation
    },
    decode=codec.decoder(DeviceRegistrationState),
    query_columns={},
)

CA_CERTIFICATES: DocumentKind[CACertificate] = DocumentKind(
    table=ca_certificates,
    record_id=lambda record: record.name,
    columns=lambda record: {"name": record.name},
    decode=codec.shared_decoder(CACertificate),
    query_columns={},
)


LINKED_HUBS: DocumentKind[LinkedHub] = DocumentKind(
    table=linked_hubs,
    record_id=lambda record: record.host_name,
    columns=lambda record: {"host_name": record.host_name},
    decode=codec.shared_decoder(LinkedHub),
    query_columns={},
)

_decode_operation = codec.decoder(RegistrationOperation)

REGISTRATION_OPERATIONS: DocumentKind[RegistrationOperation] = DocumentKind(
    table=registration_operations,
    record_id=lambda record: record.operation_id,
    columns=lambda record: {
        "registration_id": record.registration_id,
        "created_at": record.created.timestamp(),
    },
    decode=_decode_operation,
    query_columns={},
)

TPM_CHALLENGES: DocumentKind[TpmChallenge] = DocumentKind(
    table=tpm_challenges,
    record_id=lambda record: record.registration_id,
    columns=lambda record: {
        "registration_id": record.registration_id,
        "expires_at": record.expires.timestamp(),
    },
    decode=codec.decoder(TpmChallenge),
    query_columns={},
)

TPM_HUB_KEYS: DocumentKind[TpmHubKey] = DocumentKind(
    table=tpm_hub_keys,
    record_id=lambda record: record.registration_id,
    columns=lambda record: {"registration_id": record.registration_id},
    decode=codec.decoder(TpmHubKey),
    query_columns={},
)


def document_around_created(record: Dated) -> tuple[str, str]:
    """The record's document in two parts, the text of its creation time left out between
    them: ``head + codec.timestamp_text(record.created) + tail == codec.encode(record)``."""
    document = codec.encode(record)
    marker = f'"created":"{codec.timestamp_text(record.created)}"'
    if document.count(marker) == 1:
        cut = document.index(marker) + 11  # len('"created":"')
        return document[:cut], document[cut + len(marker) - 12 :]
    # The record holds that text elsewhere too (in a twin, say): encode the parts apart.
    names = [field.name for field in dataclasses.fields(record)]
    at = names.index("created")  # never first nor last: an id comes before, a time after
    before = codec.encode({name: getattr(record, name) for name in names[:at]})
    after = codec.encode({name: getattr(record, name) for name in names[at + 1 :]})
    return before[:-1] + ',"created":"', '",' + after[1:]


_NAMES_PER_STATEMENT = 8  # statements prepared for up to this many hub names
_KEY_NAMES = tuple(f"k{i}" for i in range(_NAMES_PER_STATEMENT))


def _all_linked(count: int) -> sa.ColumnElement[bool]:
    """True when the hubs keyed ``:h0`` .. ``:h{count-1}`` (distinct) are all linked."""
    keys: list[sa.BindParameter[str]] = [sa.bindparam(f"h{i}") for i in range(count)]
    linked = (
        sa.select(sa.func.count())
        .select_from(linked_hubs)
        .where(linked_hubs.c.id_key.in_(keys))
        .scalar_subquery()
    )
    return linked == sa.literal_column(str(count))


class SqlLinkedRepository(SqlDocumentRepository[D]):
    """Records with enrollment settings (enrollments, enrollment groups): writes that name
    IoT hubs check in the same statement that the hubs are linked, and an update can keep
    the stored creation time (a column of its own) without reading the record first."""

    def __init__(self, executor: Executor, kind: DocumentKind[D]) -> None:
        super().__init__(executor, kind)
        # On SQLite, an UPDATE that sets an indexed column rewrites its index entry even
        # when the value stays the same (about 10 microseconds); most updates keep the
        # provisioning status, so they first try a statement that leaves it out.
        self._status_first = executor.dialect == "sqlite"
        self._overwrites: dict[tuple[bool, bool, int], Prepared] = {}
        self._inserts: dict[int, Prepared] = {}

    def _overwrite_statement(self, status_kept: bool, at_etag: bool, hubs: int) -> Prepared:
        key = (status_kept, at_etag, hubs)
        prepared = self._overwrites.get(key)
        if prepared is None:
            table = self._table
            statement = table.update().where(table.c.id_key == sa.bindparam("key"))
            if at_etag:
                statement = statement.where(table.c.etag == sa.bindparam("expected"))
            values: dict[str, Any] = {
                column.name: sa.bindparam(column.name)
                for column in table.columns
                if column.name not in ("id_key", "document", "created")
            }
            if status_kept:
                status = values.pop("provisioning_status")
                statement = statement.where(table.c.provisioning_status == status)
            if hubs:
                statement = statement.where(_all_linked(hubs))
            head: sa.BindParameter[str] = sa.bindparam("head", type_=sa.Text)
            tail: sa.BindParameter[str] = sa.bindparam("tail", type_=sa.Text)
            statement = statement.values(**values, document=head + table.c.created + tail)
            prepared = self._executor.prepare(statement.returning(table.c.created))
            if hubs <= _NAMES_PER_STATEMENT:
                self._overwrites[key] = prepared
        return prepared

    def _insert_statement(self, hubs: int) -> Prepared:
        prepared = self._inserts.get(hubs)
        if prepared is None:
            table = self._table
            names = [column.name for column in table.columns]
            values = sa.select(*(sa.bindparam(name, type_=table.c[name].type) for name in names))
            statement = table.insert().from_select(names, values.where(_all_linked(hubs)))
            prepared = self._executor.prepare(statement)
            if hubs <= _NAMES_PER_STATEMENT:
                self._inserts[hubs] = prepared
        return prepared

    async def add_linked(self, record: D, *, hubs: Sequence[str]) -> bool | None:
        keys = _hub_keys(hubs)
        if not keys:
            return await self.add(record)
        row = self._kind.row(record) | keys
        try:
            written = await self._executor.write(self._insert_statement(len(keys)), row)
        except DuplicateKey:
            return False
        return True if written == 1 else None

    async def overwrite(
        self, record: D, *, expected_etag: str | None, hubs: Sequence[str] = ()
    ) -> datetime | None:
        """One statement: the new document is written around the stored creation time."""
        head, tail = document_around_created(record)
        keys = _hub_keys(hubs)
        params = self._kind.columns(record)
        params["key"] = id_key(self._kind.record_id(record))
        params["etag"] = record.etag
        params["head"] = head
        params["tail"] = tail
        params |= keys
        at_etag = expected_etag is not None
        if at_etag:
            params["expected"] = expected_etag
        write = self._executor.write_returning
        created: str | None = None
        if self._status_first:
            created = await write(self._overwrite_statement(True, at_etag, len(keys)), params)
        if created is None:
            created = await write(self._overwrite_statement(False, at_etag, len(keys)), params)
        return None if created is None else codec.parse_timestamp(created)

    async def naming_hub(self, host_name: str, *, after: str | None, limit: int) -> list[D]:
        """Records whose document holds the hub's name as a JSON string, in any case: a
        scan, for the rare unlink (the caller tells a hub named from a name elsewhere)."""
        quoted = self._table.c.document.icontains(f'"{host_name}"', autoescape=True)
        return await self._select([quoted], after=after, limit=limit)


def _hub_keys(hubs: Sequence[str]) -> dict[str, str]:
    """The distinct keys of the hubs named, as the parameters ``_all_linked`` takes."""
    return {f"h{index}": key for index, key in enumerate(dict.fromkeys(map(id_key, hubs)))}


class SqlEnrollmentRepository(SqlLinkedRepository[IndividualEnrollment]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, ENROLLMENTS)


class SqlEnrollmentGroupRepository(SqlLinkedRepository[EnrollmentGroup]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, ENROLLMENT_GROUPS)


class SqlCertificateRepository(SqlDocumentRepository[CACertificate]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, CA_CERTIFICATES)

    async def list(self) -> list[CACertificate]:
        return await self.query(None, after=None, limit=1_000_000)


class SqlRegistrationStateRepository(SqlDocumentRepository[DeviceRegistrationState]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, REGISTRATION_STATES)
        key: sa.BindParameter[str] = sa.bindparam("key")
        table = registration_states
        self._operation = executor.prepare(
            sa.select(table.c.operation).where(table.c.id_key == key)
        )

    async def record_finished(self, operation: RegistrationOperation) -> None:
        state = operation.state
        assert state is not None
        assert state.registration_id == operation.registration_id
        row = self._kind.row(state)
        row["operation"] = codec.encode(operation)
        await self._executor.write(self._upsert, row)

    async def finished_operation(
        self, registration_id: str, operation_id: str
    ) -> RegistrationOperation | None:
        document = await self._executor.scalar(self._operation, {"key": id_key(registration_id)})
        if document is None:
            return None
        operation = _decode_operation(document)
        return operation if operation.operation_id == operation_id else None

    async def query_group(
        self, enrollment_group_id: str, *, after: str | None, limit: int
    ) -> list[DeviceRegistrationState]:
        belongs = registration_states.c.group_key == id_key(enrollment_group_id)
        return await self._select([belongs], after=after, limit=limit)


class SqlHubRepository(SqlDocumentRepository[LinkedHub]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, LINKED_HUBS)
        # One statement per number of names: SELECT id_key ... WHERE id_key IN (:k0, :k1)
        self._linked = {
            count: executor.prepare(
                sa.select(linked_hubs.c.id_key).where(
                    linked_hubs.c.id_key.in_([sa.bindparam(f"k{i}") for i in range(count)])
                )
            )
            for count in range(1, _NAMES_PER_STATEMENT + 1)
        }

    async def missing(self, host_names: Sequence[str]) -> list[str]:
        """One statement (for up to eight names; more go in groups of eight)."""
        keys = [id_key(name) for name in host_names]
        found: set[str] = set()
        step = _NAMES_PER_STATEMENT
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            params = dict(zip(_KEY_NAMES, chunk, strict=False))
            found.update(await self._executor.scalars(self._linked[len(chunk)], params))
        if len(found) == len(keys):
            return []
        return [name for name, key in zip(host_names, keys, strict=True) if key not in found]

    async def list(self) -> list[LinkedHub]:
        return await self.query(None, after=None, limit=1_000_000)


_ORDER: tuple[sa.ColumnClause[Any], ...] = (
    sa.literal_column("kind"),
    sa.literal_column("id_key"),
)


def _tagged(table: sa.Table, kind: int) -> sa.Select[Any]:
    """The table's documents, each row tagged with ``kind`` (written into the SQL)."""
    return sa.select(sa.literal_column(str(kind)).label("kind"), table.c.id_key, table.c.document)


class SqlRegistrationReads:
    """Each read of several kinds of record as one UNION ALL, its rows tagged with their kind:
    one statement for the store where two would do, so one round trip to PostgreSQL."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        key: sa.BindParameter[str] = sa.bindparam("key")
        state = _tagged(registration_states, 0).where(registration_states.c.id_key == key)
        self._state_and_hubs = executor.prepare(
            sa.union_all(state, _tagged(linked_hubs, 1)).order_by(*_ORDER)
        )
        self._enrollment_or_groups: dict[tuple[AttestationType, int], Prepared] = {}

    async def enrollment_or_groups(
        self, registration_id: str, attestation: AttestationType, limit: int
    ) -> tuple[IndividualEnrollment | None, list[EnrollmentGroup]]:
        statement = self._enrollment_or_groups.get((attestation, limit))
        if statement is None:
            statement = self._enrollment_or_groups_statement(attestation, limit)
            self._enrollment_or_groups[(attestation, limit)] = statement
        rows = await self._executor.rows(statement, {"key": id_key(registration_id)})
        if rows and rows[0][0] == 0:
            return ENROLLMENTS.decode(rows[0][2]), []
        return None, [ENROLLMENT_GROUPS.decode(document) for _, _, document in rows]

    def _enrollment_or_groups_statement(self, attestation: AttestationType, limit: int) -> Prepared:
        key: sa.BindParameter[str] = sa.bindparam("key")
        enrollment = _tagged(enrollments, 0).where(enrollments.c.id_key == key)
        groups = (
            _tagged(enrollment_groups, 1)
            # written into the SQL: one of the domain's attestation types
            .where(enrollment_groups.c.attestation_type == sa.literal_column(f"'{attestation}'"))
            .where(~sa.exists().where(enrollments.c.id_key == key))
            .order_by(enrollment_groups.c.id_key)
            .limit(limit)
            .subquery()
        )
        return self._executor.prepare(sa.union_all(enrollment, sa.select(groups)).order_by(*_ORDER))

    async def state_and_hubs(
        self, registration_id: str
    ) -> tuple[DeviceRegistrationState | None, list[LinkedHub]]:
        rows = await self._executor.rows(self._state_and_hubs, {"key": id_key(registration_id)})
        state = None
        if rows and rows[0][0] == 0:
            state = REGISTRATION_STATES.decode(rows[0][2])
            rows = rows[1:]
        return state, [LINKED_HUBS.decode(document) for _, _, document in rows]


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


class SqlTpmChallengeRepository(SqlDocumentRepository[TpmChallenge]):
    """The latest challenge of each TPM registration: ``put`` replaces it, ``replace`` at
    its etag holds it longer (unless a new challenge came meanwhile)."""

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, TPM_CHALLENGES)

    async def delete_expired(self, moment: datetime) -> None:
        await self._executor.write(
            tpm_challenges.delete().where(tpm_challenges.c.expires_at < moment.timestamp())
        )


class SqlTpmHubKeyRepository(SqlDocumentRepository[TpmHubKey]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, TPM_HUB_KEYS)


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
        return await self.read()

    async def read(self) -> tuple[str, list[SharedAccessPolicy]]:
        """The ID scope and the policies of a store already initialised."""
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
