"""Landing a provisioned device in its IoT hub: the identity and twin DPS writes there.

After dpsd picks a hub for a device, and before the device is told ``assigned``, the device
must exist in that hub as the real service leaves it: authenticated as it attested, with the
enrollment's initial twin on its first assignment, and moved (or reset) by the enrollment's
reprovision policy when it changes hubs. The hub is reached through its registry API
(IotHubRegistry): an Azure IoT hub or one that dpsd serves itself, the same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dpsd.domain.attestation import AttestationType
from dpsd.domain.device_auth import derive_device_key
from dpsd.domain.enrollment import EnrollmentSettings
from dpsd.domain.hub import (
    OWNER_HUB_POLICY,
    LinkedHub,
    connection_string_parts,
)
from dpsd.domain.hub_device import (
    DeviceIdentity,
    HubAuthentication,
    HubAuthenticationType,
    HubSymmetricKey,
    TwinContent,
    X509Thumbprint,
)
from dpsd.service.ports import HubConnection, HubRegistryError, IotHubRegistry

HUB_UNAUTHORIZED_ERROR_CODE = 400209
HUB_FAILED_ERROR_CODE = 500000


class Move(enum.Enum):
    """What a registration does to the device's data in the hubs."""

    FIRST = "first"  # new in this hub: the initial twin
    STAY = "stay"  # same hub as before: the twin is kept
    RESET_IN_PLACE = "reset in place"  # same hub, migrateDeviceData false: initial twin again
    MIGRATE = "migrate"  # another hub: the twin moves along, the old device is deleted
    RESET = "reset"  # another hub: the initial twin, the old device is deleted


@dataclass(frozen=True, slots=True)
class Landing:
    """Everything one landing writes. ``previous``: the hub and device id the device had,
    when it moves from a hub dpsd can write to."""

    hub: HubConnection
    identity: DeviceIdentity
    move: Move
    initial_twin: TwinContent | None
    twin_override: TwinContent | None = None
    previous: tuple[HubConnection, str] | None = None


async def land(registry: IotHubRegistry, landing: Landing) -> None:
    """Write the device into its hub; raises HubRegistryError when a hub refuses or fails.

    Every step is an upsert or a delete, so a landing that failed half-way is completed by
    the device's next registration."""
    carried = None
    if landing.move == Move.MIGRATE and landing.previous is not None:
        carried = await registry.get_twin(*landing.previous)
    await registry.put_device(landing.hub, landing.identity)
    twin = _twin_to_write(landing, carried)
    if twin is not None:
        await registry.replace_twin(landing.hub, landing.identity.device_id, twin)
    if landing.move in (Move.MIGRATE, Move.RESET) and landing.previous is not None:
        await registry.delete_device(*landing.previous)


def _twin_to_write(landing: Landing, carried: TwinContent | None) -> TwinContent | None:
    """A custom allocation webhook's twin wins over every twin setting of the enrollment."""
    if landing.twin_override is not None:
        return landing.twin_override
    match landing.move:
        case Move.STAY:
            return None
        case Move.FIRST:
            return landing.initial_twin
        case Move.MIGRATE:
            return carried if carried is not None else landing.initial_twin
        case Move.RESET | Move.RESET_IN_PLACE:
            return landing.initial_twin or TwinContent()


def choose_move(previous_hub: str | None, hub: str, settings: EnrollmentSettings) -> Move:
    if previous_hub is None:
        return Move.FIRST
    migrate = settings.reprovision_policy.migrate_device_data
    if previous_hub.lower() == hub.lower():
        return Move.STAY if migrate else Move.RESET_IN_PLACE
    return Move.MIGRATE if migrate else Move.RESET


def hub_connection(hub: LinkedHub) -> HubConnection | None:
    """How dpsd writes into ``hub``; None for a hub that only records assignments."""
    if hub.builtin:
        owner = hub.policy(OWNER_HUB_POLICY) or hub.builtin_policies[0]
        return HubConnection(hub.host_name, owner.name, owner.primary_key, builtin=True)
    if hub.connection_string is None:
        return None
    parts = connection_string_parts(hub.connection_string)
    policy, key = parts.get("sharedaccesskeyname"), parts.get("sharedaccesskey")
    if not policy or not key:
        raise HubRegistryError(
            None,
            f"the connection string of IoT hub {hub.host_name!r} lacks a "
            "SharedAccessKeyName or SharedAccessKey",
        )
    return HubConnection(parts.get("hostname") or hub.host_name, policy, key)


def device_authentication(
    attestation_type: AttestationType,
    settings: EnrollmentSettings,
    *,
    registration_id: str,
    from_group: bool,
    certificate_thumbprint: str | None,
    device_keys: tuple[str, str] | None = None,
) -> HubAuthentication:
    """What the device authenticates to its hub with: the symmetric key it attested with
    (derived from the group's for a group member), the certificate it presented, or the
    keys dpsd gave its TPM (``device_keys``)."""
    if attestation_type == AttestationType.TPM and device_keys is not None:
        return HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey(*device_keys))
    if attestation_type == AttestationType.X509 and certificate_thumbprint:
        thumbprint = certificate_thumbprint.upper()
        return HubAuthentication(
            HubAuthenticationType.SELF_SIGNED,
            x509_thumbprint=X509Thumbprint(thumbprint, thumbprint),
        )
    keys = settings.attestation.symmetric_key
    primary, secondary = (keys.primary_key, keys.secondary_key) if keys else (None, None)
    if from_group:
        primary = derive_device_key(primary, registration_id) if primary else None
        secondary = derive_device_key(secondary, registration_id) if secondary else None
    return HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey(primary, secondary))


def twin_content(document: Any) -> TwinContent | None:
    """An enrollment's (or a webhook's) ``initialTwin``: ``{"tags", "properties":
    {"desired"}}``; None when it says nothing."""
    if not isinstance(document, dict):
        return None
    tags = document.get("tags")
    properties = document.get("properties")
    desired = properties.get("desired") if isinstance(properties, dict) else None
    return TwinContent(
        tags=_without_metadata(tags) if isinstance(tags, dict) else {},
        desired=_without_metadata(desired) if isinstance(desired, dict) else {},
    )


def _without_metadata(values: dict[str, Any]) -> dict[str, Any]:
    """``$version`` and ``$metadata`` belong to the hub, not to what is written."""
    return {key: value for key, value in values.items() if not key.startswith("$")}


def failure_code(error: HubRegistryError) -> int:
    """400209 when the hub refused dpsd's credentials (the C SDK reports it as
    unauthorized); a server error code otherwise."""
    if error.status in (401, 403):
        return HUB_UNAUTHORIZED_ERROR_CODE
    return HUB_FAILED_ERROR_CODE
