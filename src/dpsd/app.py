"""The composition root: builds every part of dpsd from one Settings object."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.administration import (
    Store,
    SystemClock,
    SystemEntropy,
    connection_string,
    hub_service,
    open_store,
)
from dpsd.amqp.server import AmqpServer
from dpsd.client_tls import ClientCertificateTrust
from dpsd.devices.listener import Admission
from dpsd.devices.websocket import DeviceWebSockets
from dpsd.domain.sas import OWNER_POLICY, SharedAccessPolicy
from dpsd.http.access import IN_PROCESS, AccessLog
from dpsd.http.app import ServiceApiApp
from dpsd.http.device_api import DeviceHandlers
from dpsd.http.errors import ERROR_CODE_HEADER
from dpsd.http.health import HealthProbes
from dpsd.http.host_dispatch import HostDispatch, HubLookup
from dpsd.http.hub_app import build_hub_app
from dpsd.http.hub_errors import ERROR_CODE_HEADER as HUB_ERROR_CODE_HEADER
from dpsd.http.routing import Router
from dpsd.http.service_api import (
    ENROLLMENT_GROUPS,
    ENROLLMENTS,
    ProvisioningRecords,
    RegistrationStateHandlers,
)
from dpsd.integrations.hub_http import HttpxHubTransport
from dpsd.integrations.in_process import InProcessTransport
from dpsd.integrations.iothub import IotHubRestRegistry
from dpsd.integrations.webhook import WebhookCustomAllocator
from dpsd.mqtt.server import MqttServer
from dpsd.service.certificates import CertificateService
from dpsd.service.device_registration import DeviceRegistrationService
from dpsd.service.enrollment_groups import EnrollmentGroupService
from dpsd.service.enrollments import EnrollmentService
from dpsd.service.hub_registry import HubRegistryService
from dpsd.service.hubs import HubService
from dpsd.service.ports import RegistrationStateStore, TrustedCertificates
from dpsd.service.registration_states import RegistrationStateService
from dpsd.service.throttling import Throttle
from dpsd.service.tpm_attestation import TpmAttestor
from dpsd.service.x509_trust import certificates_to_trust
from dpsd.settings import Settings
from dpsd.storage.executor import Executor
from dpsd.storage.health import ErrorCountingExecutor, store_answers
from dpsd.storage.sql import (
    SqlOperationRepository,
    SqlRegistrationReads,
    SqlTpmChallengeRepository,
    SqlTpmHubKeyRepository,
)
from dpsd.telemetry.metrics import Metrics
from dpsd.telemetry.registrations import ReportedRegistrations
from dpsd.tls_paths import TlsFiles
from dpsd.wire import Disclosure, enrollment_to_wire, group_to_wire


class _LateApp:
    """An ASGI app that forwards to one set once the application is built: the hub
    registry, built before the application, reaches the built-in hubs through it. The
    requests it forwards are marked as sent in process (for the access log)."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the application is not built yet"
        scope[IN_PROCESS] = True
        await self.app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class Siblings:
    """How one worker of ``dpsd serve --workers N`` works with the others (dpsd.workers):
    the directory they count their metrics in together (None: no metrics served), and how
    to tell them of certificates it has come to trust, so that a device whose enrollment
    one worker just wrote completes its TLS handshake on any of them."""

    metrics: Path | None
    announce_trust: Callable[[list[str]], None]


class SharedTrust:
    """This worker's handshakes trust a certificate, then its siblings' do too."""

    def __init__(self, local: ClientCertificateTrust, announce: Callable[[list[str]], None]):
        self._local = local
        self._announce = announce

    def trust(self, certificates: Iterable[str]) -> None:
        added = self._local.add(certificates)
        if added:
            self._announce(added)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    asgi_app: ASGIApp
    id_scope: str
    policies: dict[str, SharedAccessPolicy]
    tls: TlsFiles
    certificates: CertificateService
    client_trust: ClientCertificateTrust
    refresh_trust: Callable[[], Awaitable[None]]
    devices: DeviceRegistrationService
    now: Callable[[], datetime]
    mqtt: MqttServer
    amqp: AmqpServer
    websockets: DeviceWebSockets
    hubs: HubService
    hub_registry: HubRegistryService
    registration_states: RegistrationStateStore
    metrics: Metrics

    def connection_string(
        self, port: int, hostname: str | None = None, policy_name: str = OWNER_POLICY
    ) -> str:
        return connection_string(self.settings, self.policies, port, hostname, policy_name)


def _hub_trust(tls: TlsFiles) -> ssl.SSLContext:
    """IoT hubs are trusted as the system trusts them, and the hubs dpsd serves itself by
    the data dir's CA, which signs their certificates."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(tls.ca_certificate))
    return context


@asynccontextmanager
async def build_runtime(
    settings: Settings, siblings: Siblings | None = None
) -> AsyncIterator[Runtime]:
    """Prepare the data dir and the store, then hand out a ready runtime. ``siblings``:
    this process is one of several workers serving the same listeners."""
    clock, entropy = SystemClock(), SystemEntropy()
    metrics = Metrics(process=True, shared=siblings.metrics if siblings else None)

    def counting_errors(executor: Executor) -> Executor:
        return ErrorCountingExecutor(executor, metrics.store_error)

    async with (
        open_store(settings, clock, entropy, counting_errors) as store,
        _served(store, clock, entropy, metrics, siblings) as runtime,
    ):
        yield runtime


@asynccontextmanager
async def _served(
    store: Store,
    clock: SystemClock,
    entropy: SystemEntropy,
    metrics: Metrics,
    siblings: Siblings | None,
) -> AsyncIterator[Runtime]:
    settings, tls = store.settings, store.tls
    webhook_client = httpx.AsyncClient(follow_redirects=False)
    hub_transport = HttpxHubTransport(
        httpx.AsyncHTTPTransport(verify=_hub_trust(tls)), settings.hub_timeout
    )
    own_app = _LateApp()
    builtin_hub_transport = InProcessTransport(own_app)
    devices: DeviceRegistrationService | None = None
    try:
        client_trust = ClientCertificateTrust(tls)
        trust: TrustedCertificates = client_trust
        if siblings is not None:
            trust = SharedTrust(client_trust, siblings.announce_trust)

        async def refresh_trust() -> None:
            client_trust.trust(
                await certificates_to_trust(store.enrollments, store.groups, store.certificates)
            )

        await refresh_trust()
        enrollments = EnrollmentService(
            store.enrollments, store.states, clock, entropy, store.hubs, trust
        )
        groups = EnrollmentGroupService(
            store.groups, store.certificates, clock, entropy, store.hubs, trust
        )
        throttle = Throttle(settings.throttle_limits)
        metrics.watch_in_flight(lambda: throttle.in_flight)
        devices = DeviceRegistrationService(
            id_scope=store.id_scope,
            enrollments=store.enrollments,
            groups=store.groups,
            reads=SqlRegistrationReads(store.executor),
            certificates=store.certificates,
            states=store.states,
            operations=SqlOperationRepository(store.executor),
            clock=clock,
            entropy=entropy,
            tpm=TpmAttestor(
                store.enrollments,
                SqlTpmChallengeRepository(store.executor),
                SqlTpmHubKeyRepository(store.executor),
                clock,
                entropy,
            ),
            allocator=WebhookCustomAllocator(
                webhook_client,
                lambda record: msgspec.to_builtins(enrollment_to_wire(record, Disclosure.PUBLIC)),
                lambda record: msgspec.to_builtins(group_to_wire(record, Disclosure.PUBLIC)),
                settings.webhook_timeout,
            ),
            hub_registry=IotHubRestRegistry(hub_transport, builtin_hub_transport),
            service_location=settings.location,
            webhook_timeout=settings.webhook_timeout,
            hub_timeout=settings.hub_timeout,
            events=ReportedRegistrations(metrics),
            throttle=throttle,
        )
        routes = [
            *ProvisioningRecords(ENROLLMENTS, enrollments).routes(),
            *ProvisioningRecords(ENROLLMENT_GROUPS, groups).routes(),
            *RegistrationStateHandlers(RegistrationStateService(store.states)).routes(),
            *DeviceHandlers(devices, settings.retry_after).routes(),
        ]
        admission = Admission()  # one count of device connections for every protocol
        mqtt = MqttServer(
            devices, settings.retry_after, clock.now, admission=admission, metrics=metrics
        )
        amqp = AmqpServer(
            devices, settings.retry_after, clock.now, admission=admission, metrics=metrics
        )
        dps_app = ServiceApiApp(
            Router(routes),
            store.policies,
            settings.certificate_names,
            clock.now,
            access=AccessLog("dps", ERROR_CODE_HEADER, metrics),
        )
        hub_registry = HubRegistryService(store.hubs, store.hub_devices, clock, entropy)
        hub_access = AccessLog("hub", HUB_ERROR_CODE_HEADER, metrics)
        dispatch = HostDispatch(
            dps_app,
            build_hub_app(hub_registry, clock.now, hub_access),
            HubLookup(hub_registry.served_hub),
            settings.certificate_names,
        )
        app = HealthProbes(dispatch, lambda: store_answers(store.executor))
        own_app.app = app
        yield Runtime(
            settings=settings,
            asgi_app=app,
            id_scope=store.id_scope,
            policies=store.policies,
            tls=tls,
            certificates=CertificateService(
                store.certificates, store.groups, clock, entropy, trust
            ),
            client_trust=client_trust,
            refresh_trust=refresh_trust,
            devices=devices,
            now=clock.now,
            mqtt=mqtt,
            amqp=amqp,
            websockets=DeviceWebSockets([mqtt.listener, amqp.listener]),
            hubs=hub_service(store, entropy),
            hub_registry=hub_registry,
            registration_states=store.states,
            metrics=metrics,
        )
    finally:
        if devices is not None:
            await devices.drain()
        await webhook_client.aclose()
        await hub_transport.aclose()
        await builtin_hub_transport.aclose()
