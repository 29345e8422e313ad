"""The store of a data dir, opened as ``dpsd serve`` opens it, and the composition root of
the commands that work on it without serving (``dpsd info``, ``hub``, ``certificate``,
``policy``).

``open_store`` prepares the data dir, its TLS files and the schema, and builds the
repositories; ``dpsd.app`` builds the service on it. ``build_administration`` builds only
what the commands use, without the device and HTTP edges, whose imports (the AMQP engine
among them) cost each command about a third of its time (bench/store_commands.py).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from dpsd.data_dir import prepare_data_dir
from dpsd.domain.ids import format_id_scope
from dpsd.domain.sas import (
    ALL_RIGHTS,
    OWNER_POLICY,
    AccessRights,
    SharedAccessPolicy,
    service_connection_string,
)
from dpsd.service.certificates import CertificateService
from dpsd.service.hubs import HubService
from dpsd.settings import Settings
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import Executor, create_executor
from dpsd.storage.hub_devices import SqlHubDeviceRepository
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import (
    SqlCertificateRepository,
    SqlEnrollmentGroupRepository,
    SqlEnrollmentRepository,
    SqlHubRepository,
    SqlInstanceRepository,
    SqlRegistrationStateRepository,
)
from dpsd.tls import ensure_tls
from dpsd.tls_paths import TlsFiles

_DEFAULT_POLICIES: dict[str, AccessRights] = {
    OWNER_POLICY: ALL_RIGHTS,
    "enrollmentread": AccessRights.ENROLLMENT_READ,
    "enrollmentwrite": AccessRights.ENROLLMENT_READ | AccessRights.ENROLLMENT_WRITE,
    "registrationstatusread": AccessRights.REGISTRATION_STATUS_READ,
    "registrationstatuswrite": AccessRights.REGISTRATION_STATUS_READ
    | AccessRights.REGISTRATION_STATUS_WRITE,
}


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class SystemEntropy:
    def random_bytes(self, count: int) -> bytes:
        return os.urandom(count)


@dataclass(frozen=True, slots=True)
class Store:
    """A data dir's store, ready: its instance (ID scope, policies), TLS files and
    repositories on one executor."""

    settings: Settings
    tls: TlsFiles
    executor: Executor
    id_scope: str
    policies: dict[str, SharedAccessPolicy]
    enrollments: SqlEnrollmentRepository
    groups: SqlEnrollmentGroupRepository
    states: SqlRegistrationStateRepository
    certificates: SqlCertificateRepository
    hubs: SqlHubRepository
    hub_devices: SqlHubDeviceRepository


@asynccontextmanager
async def open_store(
    settings: Settings,
    clock: SystemClock,
    entropy: SystemEntropy,
    wrap_executor: Callable[[Executor], Executor] = lambda executor: executor,
) -> AsyncIterator[Store]:
    """Prepare the data dir, its TLS files and the schema, make the instance on first use,
    and hand out the store; ``wrap_executor`` wraps the executor (to count its errors)."""
    prepare_data_dir(settings.data_dir)
    tls = ensure_tls(settings.data_dir, settings.certificate_names, clock.now())
    engine = create_engine(settings.database_url)
    executor: Executor | None = None
    try:
        await migrate(engine)
        executor = wrap_executor(create_executor(settings.database_url, engine))
        id_scope, policies = await SqlInstanceRepository(engine).ensure(
            format_id_scope(entropy.random_bytes(4)), _new_policies(entropy)
        )
        yield Store(
            settings=settings,
            tls=tls,
            executor=executor,
            id_scope=id_scope,
            policies={policy.name: policy for policy in policies},
            enrollments=SqlEnrollmentRepository(executor),
            groups=SqlEnrollmentGroupRepository(executor),
            states=SqlRegistrationStateRepository(executor),
            certificates=SqlCertificateRepository(executor),
            hubs=SqlHubRepository(executor),
            hub_devices=SqlHubDeviceRepository(executor),
        )
    finally:
        if executor is not None:
            await executor.close()
        await engine.dispose()


def _new_policies(entropy: SystemEntropy) -> list[SharedAccessPolicy]:
    def key() -> str:
        return base64.b64encode(entropy.random_bytes(32)).decode()

    return [
        SharedAccessPolicy(name=name, primary_key=key(), secondary_key=key(), rights=rights)
        for name, rights in _DEFAULT_POLICIES.items()
    ]


async def read_policies(settings: Settings) -> dict[str, SharedAccessPolicy]:
    """The shared access policies of an initialised store, read without preparing anything
    (no migration, TLS files or trust store): for clients of a dpsd serving the data dir."""
    engine = create_engine(settings.database_url)
    try:
        _, policies = await SqlInstanceRepository(engine).read()
    finally:
        await engine.dispose()
    return {policy.name: policy for policy in policies}


@dataclass(frozen=True, slots=True)
class Administration:
    """What the store-backed commands work with. A CA certificate verified here is trusted
    by the servers on the same store when they next reload their trust (every 30 s)."""

    settings: Settings
    id_scope: str
    policies: dict[str, SharedAccessPolicy]
    tls: TlsFiles
    certificates: CertificateService
    hubs: HubService
    now: Callable[[], datetime]

    def connection_string(
        self, port: int, hostname: str | None = None, policy_name: str = OWNER_POLICY
    ) -> str:
        return connection_string(self.settings, self.policies, port, hostname, policy_name)


def connection_string(
    settings: Settings,
    policies: dict[str, SharedAccessPolicy],
    port: int,
    hostname: str | None = None,
    policy_name: str = OWNER_POLICY,
) -> str:
    """A service connection string to dpsd at ``port``; ``hostname``: the name the server
    was started with, when it differs from the settings'."""
    return service_connection_string(hostname or settings.hostname, port, policies[policy_name])


def hub_service(store: Store, entropy: SystemEntropy) -> HubService:
    return HubService(store.hubs, entropy, store.enrollments, store.groups, store.hub_devices)


@asynccontextmanager
async def build_administration(settings: Settings) -> AsyncIterator[Administration]:
    clock, entropy = SystemClock(), SystemEntropy()
    async with open_store(settings, clock, entropy) as store:
        yield Administration(
            settings=settings,
            id_scope=store.id_scope,
            policies=store.policies,
            tls=store.tls,
            certificates=CertificateService(store.certificates, store.groups, clock, entropy),
            hubs=hub_service(store, entropy),
            now=clock.now,
        )
