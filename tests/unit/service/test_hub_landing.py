"""What a landing writes into hubs, per move; the hub side is a recording registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dpsd.domain.attestation import AttestationMechanism, AttestationType, SymmetricKeyAttestation
from dpsd.domain.device_auth import derive_device_key
from dpsd.domain.enrollment import EnrollmentSettings, ReprovisionPolicy
from dpsd.domain.hub import DEFAULT_HUB_POLICIES, HubPolicy, LinkedHub
from dpsd.domain.hub_device import (
    DeviceIdentity,
    HubAuthentication,
    HubAuthenticationType,
    HubSymmetricKey,
    TwinContent,
)
from dpsd.service.hub_landing import (
    HUB_FAILED_ERROR_CODE,
    HUB_UNAUTHORIZED_ERROR_CODE,
    Landing,
    Move,
    choose_move,
    device_authentication,
    failure_code,
    hub_connection,
    land,
    twin_content,
)
from dpsd.service.ports import HubConnection, HubRegistryError

NEW = HubConnection("new.example", "iothubowner", "a2V5", builtin=True)
OLD = HubConnection("old.example", "iothubowner", "a2V5")
IDENTITY = DeviceIdentity("pump-1", HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey()))
INITIAL = TwinContent(tags={"site": "north"}, desired={"rate": 5})
CARRIED = TwinContent(tags={"site": "south"}, desired={"rate": 9})


@dataclass
class RecordingRegistry:
    """Hubs as dicts of twins by device id; every call is recorded in order."""

    twins: dict[tuple[str, str], TwinContent] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    async def put_device(self, hub: HubConnection, identity: DeviceIdentity) -> None:
        self.calls.append(("put_device", hub.host_name, identity.device_id))
        self.twins.setdefault((hub.host_name, identity.device_id), TwinContent())

    async def get_twin(self, hub: HubConnection, device_id: str) -> TwinContent | None:
        self.calls.append(("get_twin", hub.host_name, device_id))
        return self.twins.get((hub.host_name, device_id))

    async def replace_twin(self, hub: HubConnection, device_id: str, twin: TwinContent) -> None:
        self.calls.append(("replace_twin", hub.host_name, device_id))
        self.twins[(hub.host_name, device_id)] = twin

    async def delete_device(self, hub: HubConnection, device_id: str) -> None:
        self.calls.append(("delete_device", hub.host_name, device_id))
        self.twins.pop((hub.host_name, device_id), None)


def settings(*, migrate: bool = True, key: str | None = "Z3JvdXAta2V5") -> EnrollmentSettings:
    return EnrollmentSettings(
        attestation=AttestationMechanism(
            AttestationType.SYMMETRIC_KEY, symmetric_key=SymmetricKeyAttestation(key, key)
        ),
        reprovision_policy=ReprovisionPolicy(migrate_device_data=migrate),
    )


async def test_first_landing_writes_identity_then_initial_twin() -> None:
    registry = RecordingRegistry()
    await land(registry, Landing(NEW, IDENTITY, Move.FIRST, INITIAL))
    assert registry.calls == [
        ("put_device", "new.example", "pump-1"),
        ("replace_twin", "new.example", "pump-1"),
    ]
    assert registry.twins[("new.example", "pump-1")] == INITIAL


async def test_first_landing_without_initial_twin_leaves_the_twin_alone() -> None:
    registry = RecordingRegistry()
    await land(registry, Landing(NEW, IDENTITY, Move.FIRST, None))
    assert registry.calls == [("put_device", "new.example", "pump-1")]


async def test_staying_keeps_the_twin_and_reset_in_place_restores_the_initial_one() -> None:
    registry = RecordingRegistry(twins={("new.example", "pump-1"): CARRIED})
    await land(registry, Landing(NEW, IDENTITY, Move.STAY, INITIAL))
    assert registry.twins[("new.example", "pump-1")] == CARRIED
    await land(registry, Landing(NEW, IDENTITY, Move.RESET_IN_PLACE, None))
    assert registry.twins[("new.example", "pump-1")] == TwinContent()


async def test_migrating_carries_the_twin_and_deletes_the_old_device() -> None:
    registry = RecordingRegistry(twins={("old.example", "pump-0"): CARRIED})
    await land(registry, Landing(NEW, IDENTITY, Move.MIGRATE, INITIAL, previous=(OLD, "pump-0")))
    assert registry.calls[0] == ("get_twin", "old.example", "pump-0")
    assert registry.calls[-1] == ("delete_device", "old.example", "pump-0")
    assert registry.twins == {("new.example", "pump-1"): CARRIED}


async def test_resetting_to_another_hub_writes_the_initial_twin_and_deletes_the_old() -> None:
    registry = RecordingRegistry(twins={("old.example", "pump-1"): CARRIED})
    await land(registry, Landing(NEW, IDENTITY, Move.RESET, INITIAL, previous=(OLD, "pump-1")))
    assert ("get_twin", "old.example", "pump-1") not in registry.calls
    assert registry.twins == {("new.example", "pump-1"): INITIAL}


async def test_a_webhook_twin_wins_over_migration() -> None:
    registry = RecordingRegistry(twins={("old.example", "pump-1"): CARRIED})
    override = TwinContent(tags={"from": "webhook"})
    landing = Landing(NEW, IDENTITY, Move.MIGRATE, INITIAL, override, previous=(OLD, "pump-1"))
    await land(registry, landing)
    assert registry.twins[("new.example", "pump-1")] == override


async def test_a_failing_hub_stops_before_the_old_device_is_deleted() -> None:
    class Refusing(RecordingRegistry):
        async def replace_twin(self, hub: HubConnection, device_id: str, twin: TwinContent) -> None:
            raise HubRegistryError(503, "busy")

    registry = Refusing(twins={("old.example", "pump-1"): CARRIED})
    with pytest.raises(HubRegistryError):
        await land(registry, Landing(NEW, IDENTITY, Move.RESET, INITIAL, previous=(OLD, "pump-1")))
    assert ("old.example", "pump-1") in registry.twins


@pytest.mark.parametrize(
    ("previous", "migrate", "move"),
    [
        (None, True, Move.FIRST),
        ("NEW.example", True, Move.STAY),
        ("new.example", False, Move.RESET_IN_PLACE),
        ("old.example", True, Move.MIGRATE),
        ("old.example", False, Move.RESET),
    ],
)
def test_the_move_follows_the_reprovision_policy(
    previous: str | None, migrate: bool, move: Move
) -> None:
    assert choose_move(previous, "new.example", settings(migrate=migrate)) == move


def test_group_members_authenticate_with_their_derived_keys() -> None:
    authentication = device_authentication(
        AttestationType.SYMMETRIC_KEY,
        settings(),
        registration_id="sensor-42",
        from_group=True,
        certificate_thumbprint=None,
    )
    derived = derive_device_key("Z3JvdXAta2V5", "sensor-42")
    assert authentication == HubAuthentication(
        HubAuthenticationType.SAS, HubSymmetricKey(derived, derived)
    )


def test_x509_devices_are_self_signed_by_the_presented_certificate() -> None:
    authentication = device_authentication(
        AttestationType.X509,
        settings(key=None),
        registration_id="cam-7",
        from_group=False,
        certificate_thumbprint="ab" * 32,
    )
    assert authentication.type == HubAuthenticationType.SELF_SIGNED
    assert authentication.x509_thumbprint is not None
    assert authentication.x509_thumbprint.primary_thumbprint == "AB" * 32
    assert authentication.x509_thumbprint.secondary_thumbprint == "AB" * 32


def test_hub_connections() -> None:
    assert hub_connection(LinkedHub("plain.example", "e")) is None
    azure = LinkedHub(
        "hub.azure-devices.net",
        "e",
        connection_string="HostName=hub.azure-devices.net;SharedAccessKeyName=owner;"
        "SharedAccessKey=a2V5PQ==",
    )
    assert hub_connection(azure) == HubConnection("hub.azure-devices.net", "owner", "a2V5PQ==")
    policies = tuple(
        HubPolicy(name, f"{name}-1", f"{name}-2", rights)
        for name, rights in DEFAULT_HUB_POLICIES.items()
    )
    builtin = hub_connection(LinkedHub("local.hub", "e", builtin_policies=policies))
    assert builtin == HubConnection("local.hub", "iothubowner", "iothubowner-1", builtin=True)
    broken = LinkedHub("x.example", "e", connection_string="HostName=x.example")
    with pytest.raises(HubRegistryError, match="SharedAccessKey"):
        hub_connection(broken)


def test_initial_twins_and_failure_codes() -> None:
    document = {"tags": {"a": 1}, "properties": {"desired": {"b": 2, "$version": 4}}}
    assert twin_content(document) == TwinContent(tags={"a": 1}, desired={"b": 2})
    assert twin_content(None) is None
    assert failure_code(HubRegistryError(401, "no")) == HUB_UNAUTHORIZED_ERROR_CODE
    assert failure_code(HubRegistryError(None, "down")) == HUB_FAILED_ERROR_CODE
