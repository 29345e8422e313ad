"""Linking IoT hubs, built-in ones included, on the in-memory hub repository."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from dpsd.domain.errors import ValidationError
from dpsd.domain.hub import (
    DEFAULT_HUB_POLICIES,
    OWNER_HUB_POLICY,
    connection_string_parts,
)
from dpsd.domain.hub_device import (
    DeviceIdentity,
    HubAuthentication,
    HubAuthenticationType,
    HubDevice,
)
from dpsd.service.hubs import HubAlreadyLinked, HubNotFound, HubService
from dpsd.storage.memory import (
    InMemoryEnrollmentGroupRepository,
    InMemoryEnrollmentRepository,
    InMemoryHubDeviceRepository,
    InMemoryHubRepository,
)

AZURE_HUB = "HostName=az.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"


@dataclass
class FakeEntropy:
    """Deterministic, never-repeating bytes."""

    count: int = 0

    def random_bytes(self, count: int) -> bytes:
        self.count += 1
        return hashlib.shake_256(self.count.to_bytes(8, "big")).digest(count)


def make_service(devices: InMemoryHubDeviceRepository | None = None) -> HubService:
    hubs = InMemoryHubRepository()
    return HubService(
        hubs,
        FakeEntropy(),
        InMemoryEnrollmentRepository(hubs),
        InMemoryEnrollmentGroupRepository(hubs),
        devices,
    )


def hub_device(hub: str, device_id: str) -> HubDevice:
    identity = DeviceIdentity(device_id, HubAuthentication(HubAuthenticationType.NONE))
    return HubDevice(hub, identity, "1", 1, 1, datetime(2026, 1, 1, tzinfo=UTC))


async def device_ids(devices: InMemoryHubDeviceRepository, hub: str) -> list[str]:
    return [device.device_id for device in await devices.list(hub, after=None, limit=10)]


async def test_a_built_in_hub_gets_the_default_policies_with_fresh_keys() -> None:
    hub = await make_service().link("hub1.example.net", builtin=True)
    assert hub.builtin
    assert hub.writable
    assert hub.connection_string is None
    assert [policy.name for policy in hub.builtin_policies] == list(DEFAULT_HUB_POLICIES)
    assert {policy.name: policy.rights for policy in hub.builtin_policies} == DEFAULT_HUB_POLICIES
    keys = [key for policy in hub.builtin_policies for key in policy.signing_keys()]
    assert all(len(key) == 32 for key in keys)
    assert len(set(keys)) == len(keys)


async def test_other_hubs_have_no_policies() -> None:
    service = make_service()
    recorded = await service.link("hub1.example.net")
    written = await service.link("az.example.net", connection_string=AZURE_HUB)
    assert (recorded.builtin, recorded.writable) == (False, False)
    assert (written.builtin, written.writable) == (False, True)
    assert recorded.builtin_policies == written.builtin_policies == ()


@pytest.mark.parametrize(
    ("connection_string", "words"),
    [
        ("garbage", "part 'garbage' is not NAME=VALUE"),
        ("HostName=az.example.net;SharedAccessKey=a2V5", "lacks SharedAccessKeyName"),
        ("HostName=other.example.net;SharedAccessKeyName=o;SharedAccessKey=a2V5", "not 'other"),
        ("HostName=az.example.net;SharedAccessKeyName=o;SharedAccessKey=k!", "not base64"),
    ],
)
async def test_a_bad_connection_string_says_which_part_and_what_one_looks_like(
    connection_string: str, words: str
) -> None:
    service = make_service()
    form = "; an IoT hub's connection string is HostName=HUB;SharedAccessKeyName=POLICY;"
    with pytest.raises(ValidationError, match=re.escape(words) + ".*" + re.escape(form)):
        await service.link("az.example.net", connection_string=connection_string)
    assert await service.list() == []


async def test_a_built_in_hub_is_kept_with_its_policies() -> None:
    service = make_service()
    hub = await service.link("hub1.example.net", builtin=True)
    assert await service.list() == [hub]
    assert await service.get("HUB1.example.net") == hub


async def test_a_built_in_hub_may_name_a_port() -> None:
    hub = await make_service().link("localhost:8443", builtin=True)
    assert hub.host_name == "localhost:8443"


async def test_built_in_and_connection_string_exclude_each_other() -> None:
    service = make_service()
    with pytest.raises(ValidationError, match="built-in IoT hub takes no connection string"):
        await service.link("az.example.net", connection_string=AZURE_HUB, builtin=True)
    assert await service.list() == []


async def test_a_built_in_hub_is_linked_once() -> None:
    service = make_service()
    await service.link("hub1.example.net", builtin=True)
    with pytest.raises(HubAlreadyLinked):
        await service.link("HUB1.example.net", builtin=True)


async def test_connection_string_names_the_owner_policy_by_default() -> None:
    service = make_service()
    hub = await service.link("hub1.example.net:8443", builtin=True)
    text = await service.connection_string("hub1.example.net:8443")
    owner = hub.policy(OWNER_HUB_POLICY)
    assert owner is not None
    assert text == (
        f"HostName=hub1.example.net:8443;SharedAccessKeyName=iothubowner;"
        f"SharedAccessKey={owner.primary_key}"
    )


async def test_connection_string_of_another_policy_any_case() -> None:
    service = make_service()
    hub = await service.link("hub1.example.net", builtin=True)
    parts = connection_string_parts(
        await service.connection_string("HUB1.EXAMPLE.NET", "REGISTRYREAD")
    )
    policy = hub.policy("registryRead")
    assert policy is not None
    assert parts == {
        "hostname": "hub1.example.net",
        "sharedaccesskeyname": "registryRead",
        "sharedaccesskey": policy.primary_key,
    }
    assert base64.b64decode(parts["sharedaccesskey"]) == policy.signing_keys()[0]


async def test_connection_string_of_an_unknown_policy_lists_the_policies() -> None:
    service = make_service()
    await service.link("hub1.example.net", builtin=True)
    with pytest.raises(ValidationError) as raised:
        await service.connection_string("hub1.example.net", "nope")
    assert raised.value.message == (
        "IoT hub 'hub1.example.net' has no policy 'nope'; policies: iothubowner, service, "
        "device, registryRead, registryReadWrite"
    )


@pytest.mark.parametrize("connection_string", [None, AZURE_HUB])
async def test_connection_string_of_a_hub_dpsd_does_not_serve(
    connection_string: str | None,
) -> None:
    service = make_service()
    await service.link("az.example.net", connection_string=connection_string)
    with pytest.raises(ValidationError, match="not a built-in hub"):
        await service.connection_string("az.example.net")


async def test_connection_string_of_a_hub_not_linked() -> None:
    with pytest.raises(HubNotFound, match="'nothere' is not linked"):
        await make_service().connection_string("nothere")


async def test_unlinking_forgets_the_hub_devices() -> None:
    devices = InMemoryHubDeviceRepository()
    service = make_service(devices)
    for host_name in ("hub1.example.net", "hub2.example.net"):
        await service.link(host_name, builtin=True)
        for device_id in ("dev-1", "dev-2"):
            assert await devices.add(hub_device(host_name, device_id))
    await service.unlink("HUB1.example.net")
    assert [hub.host_name for hub in await service.list()] == ["hub2.example.net"]
    assert await device_ids(devices, "hub1.example.net") == []
    assert await device_ids(devices, "hub2.example.net") == ["dev-1", "dev-2"]


async def test_unlinking_a_hub_not_linked_forgets_nothing() -> None:
    devices = InMemoryHubDeviceRepository()
    assert await devices.add(hub_device("hub1.example.net", "dev-1"))
    with pytest.raises(HubNotFound):
        await make_service(devices).unlink("hub1.example.net")
    assert await device_ids(devices, "hub1.example.net") == ["dev-1"]


async def test_unlinking_works_without_hub_devices() -> None:
    service = make_service()
    await service.link("hub1.example.net", builtin=True)
    await service.unlink("hub1.example.net")
    assert await service.list() == []
