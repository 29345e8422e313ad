"""Device registration: a device attests, dpsd picks an IoT hub and records the result.

Shared by every device protocol (HTTPS now; MQTT and AMQP call the same functions). A
register call always starts an operation in ``assigning``; the device polls it until it is
``assigned``, ``failed`` or ``disabled``. Operations live in the store, so any dpsd process
sharing it can answer the polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from dpsd.domain.allocation import AllocationFailed, allocate, candidate_hubs
from dpsd.domain.attestation import AttestationType
from dpsd.domain.device_auth import derive_device_key, parse_device_token, signed_with_any
from dpsd.domain.enrollment import (
    AllocationPolicy,
    EnrollmentSettings,
    IndividualEnrollment,
    ProvisioningStatus,
)
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.errors import DomainError, InvalidToken, ValidationError
from dpsd.domain.etag import new_etag
from dpsd.domain.hub import LinkedHub
from dpsd.domain.hub_device import DeviceIdentity, TwinContent
from dpsd.domain.ids import validate_registration_id
from dpsd.domain.json_depth import MAX_JSON_DEPTH, JsonTooDeep, nests_deeper_than
from dpsd.domain.registration import (
    AssignedDeviceSubstatus,
    DeviceRegistrationState,
    RegistrationOperation,
    RegistrationStatus,
)
from dpsd.domain.tpm_public import TpmKeys
from dpsd.domain.x509_attestation import group_position, individual_matches, read_chain
from dpsd.service.device_events import (
    DeviceProtocol,
    DeviceRefused,
    DeviceThrottled,
    NoRegistrationEvents,
    RegistrationEvents,
    RegistrationFinished,
    RegistrationStarted,
)
from dpsd.service.errors import DeviceUnauthorized, NotFound, Throttled
from dpsd.service.hub_landing import (
    Landing,
    choose_move,
    device_authentication,
    failure_code,
    hub_connection,
    land,
    twin_content,
)
from dpsd.service.ports import (
    CertificateRepository,
    Clock,
    CustomAllocationRequest,
    CustomAllocationResult,
    CustomAllocator,
    EnrollmentGroupRepository,
    EnrollmentRepository,
    Entropy,
    HubRegistryError,
    IotHubRegistry,
    OperationRepository,
    RegistrationReads,
    RegistrationStateStore,
)
from dpsd.service.throttling import RegistrationSlot, Throttle
from dpsd.service.tpm_attestation import TpmAttestor, TpmProof

OPERATION_LIFETIME = timedelta(hours=1)
# How long a register call waits for its operation to finish before answering ``assigning``
# anyway (the device polls): long enough for a store write and a nearby hub.
INLINE_COMPLETION_SECONDS = 2.0
# How long a connection's SAS attestation (MQTT CONNECT, AMQP OPEN) stands for its
# registers without the store asked again: a device registers right after it connects.
ATTESTATION_STANDS_SECONDS = 5.0
_CLEANUP_EVERY = 200
# The enrollment groups a device without an enrollment of its own is attested against:
# those of its attestation type, the first this many by id.
GROUPS_ATTESTED = 1000
DISABLED_ERROR_CODE = 401008
CUSTOM_ALLOCATION_ERROR_CODE = 400210
_GRACE_SECONDS = 30
T = TypeVar("T")


class OperationNotFound(NotFound):
    def __init__(self, operation_id: str) -> None:
        super().__init__(f"No registration operation {operation_id!r} for this device")


class RegistrationNotFound(NotFound):
    def __init__(self, registration_id: str) -> None:
        super().__init__(f"Device {registration_id!r} has not registered")


@dataclass(frozen=True, slots=True)
class Credential:
    """What a device presented: a SAS token (``Authorization``), or a TLS client
    certificate chain (PEM, leaf first) that the TLS layer verified."""

    authorization: str | None = None
    client_chain: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Attested:
    """The enrollment that vouched for the device: its own, or its group's."""

    settings: EnrollmentSettings
    attestation_type: AttestationType
    device_id: str | None
    enrollment_group_id: str | None
    enrollment: IndividualEnrollment | None = None
    group_record: EnrollmentGroup | None = None
    certificate_thumbprint: str | None = None
    """SHA-256 of the certificate the device presented (X.509 attestation)."""
    tpm: TpmProof | None = None
    """The TPM keys the device proved it holds (TPM attestation)."""
    token_expiry: int | None = None
    """When the SAS token the device signed with a symmetric key expires (epoch seconds)."""
    checked_at: float | None = None
    """When the store vouched for the SAS token (epoch seconds)."""

    @classmethod
    def individual(
        cls,
        enrollment: IndividualEnrollment,
        certificate_thumbprint: str | None = None,
        tpm: TpmProof | None = None,
        token_expiry: int | None = None,
        checked_at: float | None = None,
    ) -> Attested:
        settings = enrollment.settings
        return cls(
            settings,
            settings.attestation.type,
            enrollment.device_id,
            None,
            enrollment=enrollment,
            certificate_thumbprint=certificate_thumbprint,
            tpm=tpm,
            token_expiry=token_expiry,
            checked_at=checked_at,
        )

    @classmethod
    def group(
        cls,
        group: EnrollmentGroup,
        certificate_thumbprint: str | None = None,
        token_expiry: int | None = None,
        checked_at: float | None = None,
    ) -> Attested:
        settings = group.settings
        return cls(
            settings,
            settings.attestation.type,
            None,
            group.enrollment_group_id,
            group_record=group,
            certificate_thumbprint=certificate_thumbprint,
            token_expiry=token_expiry,
            checked_at=checked_at,
        )

    @property
    def custom(self) -> bool:
        enabled = self.settings.provisioning_status == ProvisioningStatus.ENABLED
        return enabled and self.settings.allocation_policy == AllocationPolicy.CUSTOM


@dataclass(slots=True)
class DeviceRegistrationService:
    id_scope: str
    enrollments: EnrollmentRepository
    groups: EnrollmentGroupRepository
    reads: RegistrationReads
    certificates: CertificateRepository
    states: RegistrationStateStore
    operations: OperationRepository
    clock: Clock
    entropy: Entropy
    allocator: CustomAllocator
    tpm: TpmAttestor
    hub_registry: IotHubRegistry | None = None
    """Where device identities are written; None: assignments are only recorded."""
    service_location: str | None = None
    webhook_timeout: float = 10.0
    hub_timeout: float = 10.0
    inline_completion: float = INLINE_COMPLETION_SECONDS
    events: RegistrationEvents = field(default_factory=NoRegistrationEvents)
    """Where refusals, starts and outcomes are reported (logs and metrics)."""
    throttle: Throttle = field(default_factory=Throttle)
    """The load limits device requests are let in under (none by default)."""
    _registrations: int = 0
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Operations whose register was answered before they settled (stored assigning apart).
    _answered_early: set[str] = field(default_factory=set)

    async def register(
        self,
        id_scope: str,
        registration_id: str,
        credential: Credential,
        body_registration_id: str | None = None,
        payload: Any = None,
        tpm: TpmKeys | None = None,
        protocol: DeviceProtocol = DeviceProtocol.HTTPS,
        connection: Attested | None = None,
    ) -> RegistrationOperation:
        """Attest the device and start its operation: the operation settled already when it
        finished within the call, else as started. The device is answered ``assigning``
        either way, and polls for the outcome. ``tpm``: the keys a TPM
        device sends along (checked, and the EK must be the one it attested with).
        ``connection``: how the device attested when its connection opened (MQTT CONNECT,
        AMQP OPEN) with the same credential; it stands while what it rests on is unchanged
        (see ``_still_attested``), else the device is attested again."""
        validate_registration_id(registration_id)
        if body_registration_id and body_registration_id.lower() != registration_id.lower():
            raise ValidationError(
                f"registrationId {body_registration_id!r} in the body does not match "
                f"{registration_id!r} in the path"
            )
        sent_key = tpm.endorsement() if tpm is not None and tpm.endorsement_key else None
        if tpm is not None and tpm.storage_root_key:
            tpm.storage_root()
        # Shed load before any work (attestation reads the store): the cheapest answer.
        slot = self._admitted(
            registration_id, protocol, "register", self.throttle.admit_registration
        )
        try:
            attested = None
            if connection is not None:
                attested = await self._still_attested(registration_id, connection)
            if attested is None:
                attested = await self.admit(id_scope, registration_id, credential, protocol)
            if (
                sent_key is not None
                and attested.tpm is not None
                and not sent_key.same_key(attested.tpm.endorsement_key)
            ):
                raise DeviceUnauthorized(
                    "The endorsement key sent is not the one the token answers"
                )
            now = self.clock.now()
            started = RegistrationOperation(
                operation_id=self._operation_id(),
                registration_id=registration_id,
                status=RegistrationStatus.ASSIGNING,
                created=now,
                last_updated=now,
                enrollment_group_id=attested.enrollment_group_id,
                attestation_type=attested.attestation_type.value,
            )
            if attested.custom:  # answered before it finishes: the device polls it
                await self.operations.save(started)
        except BaseException:
            slot.release()
            raise
        # A slow webhook or hub must not hold the register call: the device polls meanwhile.
        completion = self._complete(started, attested, payload, protocol)
        settling = _Settling(completion, slot, self._background)
        settled = await settling.within(0 if attested.custom else self.inline_completion)
        if settled is not None:  # a store failure reaches the caller
            await self._clean_up(now)
            return settled
        # Answered before it finished (nothing of it was reported yet): reported as started,
        # and the operation stored as such, unless it finished meanwhile (an operation's
        # status only moves forward).
        self.events.started(RegistrationStarted(protocol, started, _policy_name(attested)))
        if not attested.custom:
            self._answered_early.add(started.operation_id)
            await self.operations.add(started)
        await self._clean_up(now)
        return started

    def _admitted(
        self,
        registration_id: str,
        protocol: DeviceProtocol,
        request: str,
        admit: Callable[[], T],
    ) -> T:
        """``admit()``'s answer; a refusal is reported, then raised."""
        try:
            return admit()
        except Throttled as refusal:
            event = DeviceThrottled(
                protocol, registration_id, request, refusal.limit.value, refusal.retry_after
            )
            self.events.throttled(event)
            raise

    def _admit_poll(
        self, registration_id: str, protocol: DeviceProtocol, request: str = "poll"
    ) -> None:
        """Let a read of the device's operation or state in under the poll limits."""
        self._admitted(
            registration_id, protocol, request, lambda: self.throttle.admit_poll(registration_id)
        )

    async def tpm_challenge(
        self,
        id_scope: str,
        registration_id: str,
        keys: TpmKeys,
        protocol: DeviceProtocol = DeviceProtocol.HTTPS,
    ) -> bytes:
        """The activation blob a TPM device must open before it can sign its requests;
        a device whose EK is not enrolled is reported refused."""
        validate_registration_id(registration_id)
        # The first step of a registration: counted against the same limits.
        slot = self._admitted(
            registration_id, protocol, "register", self.throttle.admit_registration
        )
        try:
            if id_scope.lower() != self.id_scope.lower():
                raise DeviceUnauthorized(f"ID scope {id_scope!r} is not this service's")
            return await self.tpm.challenge(registration_id, keys)
        except DeviceUnauthorized as error:
            presented = AttestationType.TPM.value
            self.events.refused(DeviceRefused(protocol, registration_id, presented, error.message))
            raise
        finally:
            slot.release()

    async def drain(self) -> None:
        """Let assignments still talking to webhooks and hubs finish (at shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=self._completion_bound + 1)

    @property
    def _completion_bound(self) -> float:
        """How long an assignment may take at most: a webhook, then a hub."""
        return self.webhook_timeout + self.hub_timeout

    async def operation(
        self,
        id_scope: str,
        registration_id: str,
        operation_id: str,
        credential: Credential,
        *,
        connection_attested: bool = False,
        protocol: DeviceProtocol = DeviceProtocol.HTTPS,
        settled: RegistrationOperation | None = None,
    ) -> RegistrationOperation:
        """``connection_attested``: the device proved who it is when its connection opened
        (MQTT CONNECT), so a poll, which only reads, need not prove it again. ``settled``:
        the operation the device's register on this connection settled (``register``'s
        answer), which a poll of it reads without the store."""
        if not connection_attested:
            await self.attest(id_scope, registration_id, credential)
        if settled is not None:
            answered = self.poll_settled(registration_id, operation_id, settled, protocol)
            if answered is not None:
                return answered
        self._admit_poll(registration_id, protocol)
        found = await self._find_operation(registration_id, operation_id)
        if found is None:
            raise OperationNotFound(operation_id)
        abandoned = found.created + timedelta(seconds=self._completion_bound + _GRACE_SECONDS)
        if not found.finished and self.clock.now() > abandoned:
            # The process that ran the assignment stopped before it finished.
            return replace(
                found,
                status=RegistrationStatus.FAILED,
                state=self._failed_state(
                    found,
                    None,
                    RegistrationStatus.FAILED,
                    CUSTOM_ALLOCATION_ERROR_CODE,
                    "The assignment was interrupted; register again",
                    self.clock.now(),
                ),
            )
        return found

    def poll_settled(
        self,
        registration_id: str,
        operation_id: str,
        settled: RegistrationOperation,
        protocol: DeviceProtocol,
    ) -> RegistrationOperation | None:
        """A poll by a device attested when its connection opened, answered at once when it
        asks for ``settled``, the operation its register on this connection settled (and
        let in under the poll limits like any poll). None: another operation, which
        ``operation`` looks up."""
        if settled.operation_id != operation_id or not settled.finished:
            return None
        self._admit_poll(registration_id, protocol)
        return settled

    async def _find_operation(
        self, registration_id: str, operation_id: str
    ) -> RegistrationOperation | None:
        """The operation that left the device's registration state (most polls: one
        read), else one stored apart (assigning, or failed where the state stayed)."""
        found = await self.states.finished_operation(registration_id, operation_id)
        if found is not None:
            if found.created >= self.clock.now() - OPERATION_LIFETIME:
                return found
            return None  # older than operations are kept
        found = await self.operations.get(operation_id)
        if found is None or found.registration_id.lower() != registration_id.lower():
            return None
        return found

    async def registration_state(
        self, id_scope: str, registration_id: str, credential: Credential
    ) -> DeviceRegistrationState:
        await self.attest(id_scope, registration_id, credential)
        self._admit_poll(registration_id, DeviceProtocol.HTTPS, "status")
        state = await self.states.get(registration_id)
        if state is None:
            raise RegistrationNotFound(registration_id)
        return state

    async def admit(
        self,
        id_scope: str,
        registration_id: str,
        credential: Credential,
        protocol: DeviceProtocol,
    ) -> Attested:
        """Attest a device that asks to register, or to open a connection (MQTT, AMQP);
        a device that proves no enrollment is reported refused."""
        try:
            return await self.attest(id_scope, registration_id, credential)
        except DeviceUnauthorized as error:
            presented = _presented(credential)
            self.events.refused(DeviceRefused(protocol, registration_id, presented, error.message))
            raise

    async def _still_attested(self, registration_id: str, connection: Attested) -> Attested | None:
        """``connection`` when it still proves the device, without checking its credential
        again: a SAS token (the only kind this applies to) that has not expired, which the
        store vouched for at most ATTESTATION_STANDS_SECONDS ago (a device registers right
        after it connects), or since then signed for an enrollment, or a group with no
        enrollment of the device's own come since, whose etag is unchanged (so are its keys
        and settings): two point reads, instead of a query of the groups and the keys
        derived again. None: attest again."""
        expiry = connection.token_expiry
        now = self.clock.now().timestamp()
        if expiry is None or connection.tpm is not None or expiry <= now:
            return None
        checked = connection.checked_at
        if checked is not None and 0 <= now - checked <= ATTESTATION_STANDS_SECONDS:
            return connection
        enrollment = await self.enrollments.get(registration_id)
        if connection.enrollment is not None:
            same = enrollment is not None and enrollment.etag == connection.enrollment.etag
            return connection if same else None
        group = connection.group_record
        if enrollment is not None or group is None:
            return None
        stored = await self.groups.get(group.enrollment_group_id)
        return connection if stored is not None and stored.etag == group.etag else None

    async def attest(self, id_scope: str, registration_id: str, credential: Credential) -> Attested:
        if id_scope.lower() != self.id_scope.lower():
            raise DeviceUnauthorized(f"ID scope {id_scope!r} is not this service's")
        validate_registration_id(registration_id)
        if credential.authorization is not None:
            return await self._attest_symmetric_key(
                id_scope, registration_id, credential.authorization
            )
        if credential.client_chain:
            return await self._attest_x509(registration_id, credential.client_chain)
        raise DeviceUnauthorized(
            "The device presented neither a SharedAccessSignature nor a client certificate"
        )

    async def _attest_x509(self, registration_id: str, pems: tuple[str, ...]) -> Attested:
        try:
            chain = read_chain(pems)
        except DomainError as error:
            raise DeviceUnauthorized(error.message) from error
        if chain.common_name.lower() != registration_id.lower():
            raise DeviceUnauthorized(
                f"The certificate's subject CN {chain.common_name!r} is not the registration "
                f"id {registration_id!r}"
            )
        enrollment, groups = await self.reads.enrollment_or_groups(
            registration_id, AttestationType.X509, GROUPS_ATTESTED
        )
        if enrollment is not None:
            if individual_matches(enrollment.settings.attestation, chain):
                return Attested.individual(enrollment, chain.thumbprints[0])
            raise DeviceUnauthorized("The certificate does not match this device's enrollment")
        verified = {
            record.name.lower(): record.info.sha256_thumbprint.upper()
            for record in await self.certificates.list()
            if record.is_verified
        }
        best: tuple[int, EnrollmentGroup] | None = None
        for group in groups:
            position = group_position(group.settings.attestation, chain, verified)
            if position is not None and (best is None or position < best[0]):
                best = (position, group)
        if best is None:
            raise DeviceUnauthorized("No enrollment of this service vouches for the certificate")
        return Attested.group(best[1], chain.thumbprints[0])

    async def _attest_symmetric_key(
        self, id_scope: str, registration_id: str, authorization: str
    ) -> Attested:
        now = self.clock.now().timestamp()
        try:
            token = parse_device_token(authorization, id_scope, registration_id, now=int(now))
        except InvalidToken as error:
            raise DeviceUnauthorized(error.message) from error
        enrollment, groups = await self.reads.enrollment_or_groups(
            registration_id, AttestationType.SYMMETRIC_KEY, GROUPS_ATTESTED
        )
        if enrollment is not None and enrollment.settings.attestation.type == AttestationType.TPM:
            return Attested.individual(enrollment, tpm=await self.tpm.verify(enrollment, token))
        if enrollment is not None:
            keys = enrollment.settings.attestation.symmetric_key
            if keys is not None and signed_with_any(
                token, [k for k in (keys.primary_key, keys.secondary_key) if k]
            ):
                return Attested.individual(enrollment, token_expiry=token.expiry, checked_at=now)
            raise DeviceUnauthorized("The token is not signed with this device's enrollment keys")
        for group in groups:
            keys = group.settings.attestation.symmetric_key
            if keys is None:
                continue
            # The secondary key's derivation only when the primary one did not sign.
            if any(
                signed_with_any(token, [derive_device_key(k, registration_id)])
                for k in (keys.primary_key, keys.secondary_key)
                if k
            ):
                return Attested.group(group, token_expiry=token.expiry, checked_at=now)
        raise DeviceUnauthorized("No enrollment of this service vouches for the device")

    async def _complete(
        self,
        operation: RegistrationOperation,
        attested: Attested,
        payload: Any,
        protocol: DeviceProtocol,
    ) -> RegistrationOperation:
        """Settle the operation and report how it ended."""
        policy = _policy_name(attested)
        try:
            finished = await self._settle(operation, attested, payload)
        except Exception:
            self._report_finished(protocol, operation, None, policy)
            raise
        finally:
            self._answered_early.discard(operation.operation_id)
        self._report_finished(protocol, operation, finished.state, policy)
        return finished

    def _report_finished(
        self,
        protocol: DeviceProtocol,
        operation: RegistrationOperation,
        state: DeviceRegistrationState | None,
        policy: str | None,
    ) -> None:
        seconds = (self.clock.now() - operation.created).total_seconds()
        self.events.finished(RegistrationFinished(protocol, operation, state, policy, seconds))

    async def _settle(
        self, operation: RegistrationOperation, attested: Attested, payload: Any
    ) -> RegistrationOperation:
        now = self.clock.now()
        previous, linked = await self.reads.state_and_hubs(operation.registration_id)
        record = True
        authentication_key = None
        if attested.settings.provisioning_status == ProvisioningStatus.DISABLED:
            state = self._failed_state(
                operation,
                previous,
                RegistrationStatus.DISABLED,
                DISABLED_ERROR_CODE,
                "The device's enrollment is disabled",
                now,
            )
        else:
            try:
                assignment = await self._assign(operation, attested, previous, linked, now, payload)
                hub_keys = None
                if attested.tpm is not None:
                    hub_keys = await self.tpm.hub_key(operation.registration_id, attested.tpm)
                await self._land(assignment, attested, previous, hub_keys)
                state = assignment.state
                if attested.tpm is not None and hub_keys is not None:
                    # The device's TPM takes in the key its hub identity authenticates with.
                    authentication_key = self.tpm.activation(attested.tpm, hub_keys[0])
            except AllocationFailed as error:
                state = self._failed(operation, previous, error.error_code, error.message, now)
            except HubRegistryError as error:
                state = self._failed(operation, previous, failure_code(error), error.message, now)
                # The device stays where it was last assigned: its next registration
                # tries the hub again, and migrates from there.
                record = _assigned_hub(previous) is None
        finished = operation.settled(state, now, authentication_key)
        if record:
            # One write: the state, and the operation the device polls kept with it.
            await self.states.record_finished(finished)
        stored_apart = attested.custom or operation.operation_id in self._answered_early
        if not record or stored_apart:
            # Stored apart too: the state stays as it was, or the operation was stored
            # there assigning when its register was answered (so that it does not stay so
            # once the state moves on to a later operation).
            await self.operations.save(finished)
        return finished

    async def _assign(
        self,
        operation: RegistrationOperation,
        attested: Attested,
        previous: DeviceRegistrationState | None,
        linked: list[LinkedHub],
        now: datetime,
        payload: Any,
    ) -> _Assignment:
        settings = attested.settings
        kept = _assigned_hub(previous)
        linked_names = {hub.host_name.lower() for hub in linked}
        twin_override = None
        if (
            kept
            and not settings.reprovision_policy.update_hub_assignment
            and kept.lower() in linked_names
        ):
            hub_name = kept
            payload = None
        else:
            policy = settings.allocation_policy or AllocationPolicy.HASHED
            candidates = candidate_hubs(settings, linked)
            if policy == AllocationPolicy.CUSTOM:
                result = await self._ask_webhook(operation, attested, previous, candidates, payload)
                hub_name, payload = result.iot_hub_host_name, result.payload
                twin_override = twin_content(result.initial_twin)
            else:
                hub_name = allocate(
                    policy, candidates, operation.registration_id, self.service_location
                ).host_name
                payload = None
        state = DeviceRegistrationState(
            registration_id=operation.registration_id,
            status=RegistrationStatus.ASSIGNED,
            etag=new_etag(self.entropy.random_bytes(16)),
            created=previous.created if previous else now,
            last_updated=now,
            assigned_hub=hub_name,
            device_id=attested.device_id or operation.registration_id,
            substatus=_substatus(previous, kept, hub_name, settings),
            enrollment_group_id=attested.enrollment_group_id,
            initial_hub=(previous.initial_hub if previous and previous.initial_hub else hub_name),
            payload=payload if isinstance(payload, dict) else None,
        )
        return _Assignment(state, {hub.host_name.lower(): hub for hub in linked}, twin_override)

    async def _land(
        self,
        assignment: _Assignment,
        attested: Attested,
        previous: DeviceRegistrationState | None,
        hub_keys: tuple[str, str] | None = None,
    ) -> None:
        """Write the device into its hub, when dpsd can write there. ``hub_keys``: the
        keys of a TPM device's identity."""
        state = assignment.state
        assert state.assigned_hub is not None
        assert state.device_id is not None
        hub = assignment.linked.get(state.assigned_hub.lower())
        connection = hub_connection(hub) if hub is not None else None
        if connection is None or self.hub_registry is None:
            return
        before = _assigned_hub(previous)
        before_id = previous.device_id if previous and previous.device_id else None
        if before is not None and before_id != state.device_id:
            # A new device id is a new device: the old one stays where it is.
            before = None
        left = None
        if before is not None and before.lower() != state.assigned_hub.lower():
            old_hub = assignment.linked.get(before.lower())
            old_connection = hub_connection(old_hub) if old_hub is not None else None
            if old_connection is not None and before_id is not None:
                left = (old_connection, before_id)
        settings = attested.settings
        landing = Landing(
            hub=connection,
            identity=DeviceIdentity(
                device_id=state.device_id,
                authentication=device_authentication(
                    attested.attestation_type,
                    settings,
                    registration_id=state.registration_id,
                    from_group=attested.group_record is not None,
                    certificate_thumbprint=attested.certificate_thumbprint,
                    device_keys=hub_keys,
                ),
                iot_edge=settings.capabilities.iot_edge,
            ),
            move=choose_move(before, state.assigned_hub, settings),
            initial_twin=twin_content(settings.initial_twin),
            twin_override=assignment.twin_override,
            previous=left,
        )
        try:
            async with asyncio.timeout(self.hub_timeout):
                await land(self.hub_registry, landing)
        except TimeoutError:
            raise HubRegistryError(
                None,
                f"IoT hub {connection.host_name!r} did not finish the device's registration "
                f"within {self.hub_timeout:g} seconds",
            ) from None

    async def _ask_webhook(
        self,
        operation: RegistrationOperation,
        attested: Attested,
        previous: DeviceRegistrationState | None,
        candidates: list[LinkedHub],
        payload: Any,
    ) -> CustomAllocationResult:
        definition = attested.settings.custom_allocation_definition
        if definition is None:
            raise AllocationFailed("custom allocation needs a customAllocationDefinition")
        names = tuple(hub.host_name for hub in candidates)
        assigned = previous is not None and previous.status == RegistrationStatus.ASSIGNED
        request = CustomAllocationRequest(
            webhook_url=definition.webhook_url,
            api_version=definition.api_version,
            individual_enrollment=attested.enrollment,
            enrollment_group=attested.group_record,
            registration_id=operation.registration_id,
            linked_hubs=names,
            attestation_type=attested.attestation_type.value,
            current_hub=previous.assigned_hub if assigned and previous else None,
            current_device_id=previous.device_id if assigned and previous else None,
            payload=payload,
        )
        result = await _readable_answer(self.allocator, request)
        if result.iot_hub_host_name.lower() not in {name.lower() for name in names}:
            raise AllocationFailed(
                f"Custom allocation chose {result.iot_hub_host_name!r}, which is not one of "
                f"the linked hubs offered ({', '.join(names)})",
                CUSTOM_ALLOCATION_ERROR_CODE,
            )
        return result

    def _failed(
        self,
        operation: RegistrationOperation,
        previous: DeviceRegistrationState | None,
        code: int,
        message: str,
        now: datetime,
    ) -> DeviceRegistrationState:
        return self._failed_state(
            operation, previous, RegistrationStatus.FAILED, code, message, now
        )

    def _failed_state(
        self,
        operation: RegistrationOperation,
        previous: DeviceRegistrationState | None,
        status: RegistrationStatus,
        code: int,
        message: str,
        now: datetime,
    ) -> DeviceRegistrationState:
        return DeviceRegistrationState(
            registration_id=operation.registration_id,
            status=status,
            etag=new_etag(self.entropy.random_bytes(16)),
            created=previous.created if previous else now,
            last_updated=now,
            error_code=code,
            error_message=message,
            enrollment_group_id=operation.enrollment_group_id,
            initial_hub=previous.initial_hub if previous else None,
        )

    def _operation_id(self) -> str:
        """Shaped as the real service's: ``4.<16 hex>.<uuid>``; opaque to devices."""
        raw = self.entropy.random_bytes(24)
        tail = raw[8:].hex()
        return (
            f"4.{raw[:8].hex()}.{tail[:8]}-{tail[8:12]}-{tail[12:16]}-{tail[16:20]}-{tail[20:32]}"
        )

    async def _clean_up(self, now: datetime) -> None:
        self._registrations += 1
        if self._registrations % _CLEANUP_EVERY == 0:
            await self.operations.delete_older_than(now - OPERATION_LIFETIME)
            await self.tpm.forget_expired()


@dataclass(frozen=True, slots=True)
class _Assignment:
    """The hub chosen for a device, the linked hubs by lower-cased host name, and a twin a
    custom allocation webhook asked for."""

    state: DeviceRegistrationState
    linked: dict[str, LinkedHub]
    twin_override: TwinContent | None


def _policy_name(attested: Attested) -> str:
    """The allocation policy that places the device (hashed when the enrollment names
    none)."""
    return (attested.settings.allocation_policy or AllocationPolicy.HASHED).value


def _presented(credential: Credential) -> str:
    """What kind of credential a device presented."""
    if credential.authorization is not None:
        return AttestationType.SYMMETRIC_KEY.value
    if credential.client_chain:
        return AttestationType.X509.value
    return AttestationType.NONE.value


def _assigned_hub(state: DeviceRegistrationState | None) -> str | None:
    if state is None or state.status != RegistrationStatus.ASSIGNED:
        return None
    return state.assigned_hub


def _substatus(
    previous: DeviceRegistrationState | None,
    kept: str | None,
    hub: str,
    settings: EnrollmentSettings,
) -> AssignedDeviceSubstatus:
    if kept is None or previous is None:
        return AssignedDeviceSubstatus.INITIAL_ASSIGNMENT
    if kept.lower() == hub.lower():
        return AssignedDeviceSubstatus.REPROVISIONED_TO_INITIAL_ASSIGNMENT
    if previous.initial_hub and previous.initial_hub.lower() == hub.lower():
        return AssignedDeviceSubstatus.REPROVISIONED_TO_INITIAL_ASSIGNMENT
    if settings.reprovision_policy.migrate_device_data:
        return AssignedDeviceSubstatus.DEVICE_DATA_MIGRATED
    return AssignedDeviceSubstatus.DEVICE_DATA_RESET


class _Settling:
    """An operation settling in a task of its own, which its register waits for a while.
    The task releases the registration's slot and leaves ``background`` itself when it
    ends, and hands its outcome to the register still waiting: no done-callbacks, each of
    which would cost the event loop a turn."""

    __slots__ = ("_background", "_loop", "_outcome", "_slot", "task")

    def __init__(
        self,
        completion: Coroutine[Any, Any, RegistrationOperation],
        slot: RegistrationSlot,
        background: set[asyncio.Task[Any]],
    ) -> None:
        # The loop's own methods: asking asyncio for the running loop costs a getpid() each
        # time on Python 3.11.
        self._loop = loop = asyncio.get_running_loop()
        self._outcome: asyncio.Future[RegistrationOperation | None] = loop.create_future()
        self._slot = slot
        self._background = background
        self.task = loop.create_task(self._run(completion))
        background.add(self.task)

    async def within(self, seconds: float) -> RegistrationOperation | None:
        """The settled operation if it settles within ``seconds``, else None (it goes on);
        how it failed, if it failed in time. Not waited for at all with 0 seconds."""
        outcome = self._outcome
        if not outcome.done() and seconds <= 0:
            _give_up(outcome)
        elif not outcome.done():
            timer = self._loop.call_later(seconds, _give_up, outcome)
            try:
                return await outcome
            finally:
                timer.cancel()
        return outcome.result()

    async def _run(
        self, completion: Coroutine[Any, Any, RegistrationOperation]
    ) -> RegistrationOperation | None:
        outcome = self._outcome
        try:
            settled = await completion
        except Exception as error:
            if outcome.done():
                raise  # nobody waits for it any more: the task's own failure
            outcome.set_exception(error)
            return None
        finally:
            self._slot.release()
            self._background.discard(self.task)
        if not outcome.done():
            outcome.set_result(settled)
        return settled


def _give_up(outcome: asyncio.Future[RegistrationOperation | None]) -> None:
    if not outcome.done():
        outcome.set_result(None)


async def _readable_answer(
    allocator: CustomAllocator, request: CustomAllocationRequest
) -> CustomAllocationResult:
    """The webhook's answer, refused when what it gives the device nests too deep to be
    stored and read back (the registration state keeps the payload)."""
    try:
        result = await allocator.allocate(request)
    except RecursionError:  # deeper than any decoder follows
        raise _too_deep("answer") from None
    for name, value in (("payload", result.payload), ("initialTwin", result.initial_twin)):
        if nests_deeper_than(value, MAX_JSON_DEPTH):
            raise _too_deep(name)
    return result


def _too_deep(part: str) -> AllocationFailed:
    error = JsonTooDeep(f"The custom allocation webhook's {part}")
    return AllocationFailed(error.message, CUSTOM_ALLOCATION_ERROR_CODE)
