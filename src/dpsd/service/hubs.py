"""Use cases for linked IoT hubs: link, list, unlink, and a built-in hub's keys."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from dpsd.domain.errors import ValidationError
from dpsd.domain.etag import new_etag
from dpsd.domain.hub import (
    DEFAULT_HUB_POLICIES,
    MAX_LINKED_HUBS,
    OWNER_HUB_POLICY,
    HubPolicy,
    LinkedHub,
    check_host_name,
    check_hub_connection_string,
    check_weight,
    hub_connection_string,
)
from dpsd.service import records
from dpsd.service.errors import AlreadyExists, NotFound
from dpsd.service.ports import (
    EnrollmentGroupRepository,
    EnrollmentRepository,
    Entropy,
    HubDeviceRepository,
    HubRepository,
)
from dpsd.service.references import Referrers, left_behind, referrers_of_hub

POLICY_KEY_BYTES = 32


class HubNotFound(NotFound):
    def __init__(self, host_name: str) -> None:
        super().__init__(f"IoT hub {host_name!r} is not linked")


class HubAlreadyLinked(AlreadyExists):
    def __init__(self, host_name: str) -> None:
        super().__init__(f"IoT hub {host_name!r} is linked already")


@dataclass(frozen=True, slots=True)
class HubService:
    """``enrollments`` and ``groups``: the records that may name a hub. ``devices``: where
    the devices of built-in hubs are kept, forgotten when their hub is unlinked (without
    it, unlinking leaves them to whoever keeps them)."""

    hubs: HubRepository
    entropy: Entropy
    enrollments: EnrollmentRepository
    groups: EnrollmentGroupRepository
    devices: HubDeviceRepository | None = None

    async def link(
        self,
        host_name: str,
        *,
        connection_string: str | None = None,
        weight: int = 1,
        apply_allocation_policy: bool = True,
        location: str | None = None,
        builtin: bool = False,
    ) -> LinkedHub:
        """``builtin``: a hub that dpsd serves itself, with the default shared access
        policies of an IoT hub and generated keys."""
        check_host_name(host_name)
        check_weight(weight)
        if builtin and connection_string is not None:
            raise ValidationError(
                "a built-in IoT hub takes no connection string: dpsd serves it and makes its keys"
            )
        if connection_string is not None:
            check_hub_connection_string(connection_string, host_name)
        if len(await self.hubs.list()) >= MAX_LINKED_HUBS:
            raise ValidationError(f"the service links {MAX_LINKED_HUBS} IoT hubs, its limit")
        hub = LinkedHub(
            host_name=host_name,
            etag=new_etag(self.entropy.random_bytes(16)),
            allocation_weight=weight,
            apply_allocation_policy=apply_allocation_policy,
            location=location,
            connection_string=connection_string,
            builtin_policies=self._new_policies() if builtin else (),
        )
        if not await self.hubs.add(hub):
            raise HubAlreadyLinked(host_name)
        return hub

    def _new_policies(self) -> tuple[HubPolicy, ...]:
        def key() -> str:
            return base64.b64encode(self.entropy.random_bytes(POLICY_KEY_BYTES)).decode()

        return tuple(
            HubPolicy(name=name, primary_key=key(), secondary_key=key(), rights=rights)
            for name, rights in DEFAULT_HUB_POLICIES.items()
        )

    async def get(self, host_name: str) -> LinkedHub:
        hub = await self.hubs.get(host_name)
        if hub is None:
            raise HubNotFound(host_name)
        return hub

    async def list(self) -> list[LinkedHub]:
        return await self.hubs.list()

    async def connection_string(self, host_name: str, policy_name: str = OWNER_HUB_POLICY) -> str:
        """The connection string of one of a built-in hub's policies (it holds the key)."""
        hub = await self.get(host_name)
        if not hub.builtin:
            raise ValidationError(
                f"IoT hub {hub.host_name!r} is not a built-in hub: dpsd does not hold its keys"
            )
        policy = hub.policy(policy_name)
        if policy is None:
            names = ", ".join(policy.name for policy in hub.builtin_policies)
            raise ValidationError(
                f"IoT hub {hub.host_name!r} has no policy {policy_name!r}; policies: {names}"
            )
        return hub_connection_string(hub.host_name, policy)

    async def unlink(self, host_name: str, *, force: bool = False) -> tuple[Referrers, ...]:
        """Unlink a hub no enrollment or group names; the devices of a built-in hub go with
        it. ``force`` unlinks it anyway; what still names it is returned, for the caller
        to say."""
        await self.get(host_name)
        left = left_behind(
            await referrers_of_hub(self.enrollments, self.groups, host_name),
            force,
            lambda referrers: (
                f"IoT hub {host_name!r} is still named by {referrers}: "
                "change their iotHubs, or delete them, first "
                f"(or dpsd hub remove {host_name} --force)"
            ),
        )
        await records.delete(self.hubs, host_name, None, lambda: HubNotFound(host_name))
        if self.devices is not None:
            # After the hub is gone, so that no write into it can land after this.
            await self.devices.delete_hub(host_name)
        return left
