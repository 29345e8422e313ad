"""Devices in an IoT hub's identity registry, and their twins.

What dpsd writes into the hub a device is assigned to (an identity and an initial twin), in
the IoT hub's own vocabulary, and what a hub that dpsd serves itself stores per device.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JsonObject = dict[str, Any]


class HubAuthenticationType(enum.StrEnum):
    SAS = "sas"
    SELF_SIGNED = "selfSigned"
    CERTIFICATE_AUTHORITY = "certificateAuthority"
    NONE = "none"


class DeviceStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class HubSymmetricKey:
    primary_key: str | None = None
    secondary_key: str | None = None


@dataclass(frozen=True, slots=True)
class X509Thumbprint:
    """Hex digests of the device's certificates (SHA-1: 40 characters, SHA-256: 64)."""

    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None


@dataclass(frozen=True, slots=True)
class HubAuthentication:
    type: HubAuthenticationType
    symmetric_key: HubSymmetricKey | None = None
    x509_thumbprint: X509Thumbprint | None = None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device as a client writes it into a hub (the body of ``PUT /devices/{id}``)."""

    device_id: str
    authentication: HubAuthentication
    status: DeviceStatus = DeviceStatus.ENABLED
    status_reason: str | None = None
    iot_edge: bool = False


@dataclass(frozen=True, slots=True)
class TwinContent:
    """What a service client writes into a twin: tags and desired properties, without
    ``$version`` or ``$metadata``."""

    tags: JsonObject = field(default_factory=dict)
    desired: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TwinProperties:
    """Desired or reported properties: the values, their version (``$version``), and the
    ``$metadata`` tree (``$lastUpdated`` per object and leaf)."""

    values: JsonObject = field(default_factory=dict)
    version: int = 1
    metadata: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HubDevice:
    """A device of a built-in hub as stored: its identity, its twin and the hub's own fields.

    ``device_version`` and ``twin_version`` count the writes of each; the etags the wire
    shows are made from them, as IoT Hub's are. ``generation_id`` changes only when the
    device is deleted and created again."""

    hub: str
    identity: DeviceIdentity
    generation_id: str
    device_version: int
    twin_version: int
    status_updated: datetime
    tags: JsonObject = field(default_factory=dict)
    desired: TwinProperties = field(default_factory=TwinProperties)
    reported: TwinProperties = field(default_factory=TwinProperties)

    @property
    def device_id(self) -> str:
        return self.identity.device_id
