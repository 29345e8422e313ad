"""IoT hubs linked to the service: where devices can be assigned."""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass

from dpsd.domain.errors import ValidationError

MIN_WEIGHT = 1
MAX_WEIGHT = 1000
MAX_LINKED_HUBS = 50
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::[0-9]{1,5})?"
)


class HubAccessRights(enum.Flag):
    """The rights an IoT hub's shared access policies grant."""

    REGISTRY_READ = enum.auto()
    REGISTRY_WRITE = enum.auto()
    SERVICE_CONNECT = enum.auto()
    DEVICE_CONNECT = enum.auto()


HUB_RIGHT_NAMES: dict[HubAccessRights, str] = {
    HubAccessRights.REGISTRY_READ: "RegistryRead",
    HubAccessRights.REGISTRY_WRITE: "RegistryWrite",
    HubAccessRights.SERVICE_CONNECT: "ServiceConnect",
    HubAccessRights.DEVICE_CONNECT: "DeviceConnect",
}
ALL_HUB_RIGHTS = HubAccessRights(sum(right.value for right in HUB_RIGHT_NAMES))
OWNER_HUB_POLICY = "iothubowner"
DEFAULT_HUB_POLICIES: dict[str, HubAccessRights] = {
    OWNER_HUB_POLICY: ALL_HUB_RIGHTS,
    "service": HubAccessRights.SERVICE_CONNECT,
    "device": HubAccessRights.DEVICE_CONNECT,
    "registryRead": HubAccessRights.REGISTRY_READ,
    "registryReadWrite": HubAccessRights.REGISTRY_READ | HubAccessRights.REGISTRY_WRITE,
}


@dataclass(frozen=True, slots=True)
class HubPolicy:
    """A shared access policy of an IoT hub that dpsd serves itself (keys are base64)."""

    name: str
    primary_key: str
    secondary_key: str
    rights: HubAccessRights

    def signing_keys(self) -> tuple[bytes, bytes]:
        return base64.b64decode(self.primary_key), base64.b64decode(self.secondary_key)


@dataclass(frozen=True, slots=True)
class LinkedHub:
    """``apply_allocation_policy`` false: the hub takes part only when an enrollment names it.
    ``location`` is what geoLatency allocation compares with the service's own location.

    Where devices land: a hub with a ``connection_string`` is an IoT hub elsewhere (Azure)
    that dpsd writes device identities into; a hub with ``builtin_policies`` is one that
    dpsd serves itself; a hub with neither only has assignments recorded."""

    host_name: str
    etag: str
    allocation_weight: int = 1
    apply_allocation_policy: bool = True
    location: str | None = None
    connection_string: str | None = None
    builtin_policies: tuple[HubPolicy, ...] = ()

    @property
    def builtin(self) -> bool:
        return bool(self.builtin_policies)

    @property
    def writable(self) -> bool:
        """Whether dpsd writes the devices assigned here into the hub."""
        return self.builtin or self.connection_string is not None

    def policy(self, name: str) -> HubPolicy | None:
        for policy in self.builtin_policies:
            if policy.name.lower() == name.lower():
                return policy
        return None


def check_host_name(host_name: str, *, what: str = "IoT hub host name") -> str:
    if not _HOST_NAME.fullmatch(host_name):
        raise ValidationError(f"{what} {host_name!r} is not a host name")
    return host_name


def check_weight(weight: int) -> int:
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise ValidationError(
            f"allocation weight must be between {MIN_WEIGHT} and {MAX_WEIGHT}, not {weight}"
        )
    return weight


HUB_CONNECTION_STRING_FORM = "HostName=HUB;SharedAccessKeyName=POLICY;SharedAccessKey=KEY"


def check_hub_connection_string(connection_string: str, host_name: str) -> None:
    """A connection string dpsd can write devices with: a policy's (name and base64 key),
    for the hub ``host_name``."""
    problem = _connection_string_problem(connection_string, host_name)
    if problem is not None:
        raise ValidationError(
            f"{problem}; an IoT hub's connection string is {HUB_CONNECTION_STRING_FORM}"
        )


def _connection_string_problem(connection_string: str, host_name: str) -> str | None:
    for part in connection_string.strip().strip(";").split(";"):
        name, separator, value = part.partition("=")
        if not separator or not name.strip() or not value.strip():
            return f"the connection string's part {part.strip()!r} is not NAME=VALUE"
    parts = connection_string_parts(connection_string)
    needed = ("HostName", "SharedAccessKeyName", "SharedAccessKey")
    missing = [name for name in needed if name.lower() not in parts]
    if missing:
        return f"the connection string lacks {' and '.join(missing)}"
    if parts["hostname"].lower() != host_name.lower():
        return f"the connection string's HostName must be {host_name!r}, not {parts['hostname']!r}"
    try:
        base64.b64decode(parts["sharedaccesskey"], validate=True)
    except ValueError:  # binascii.Error
        return "the connection string's SharedAccessKey is not base64"
    return None


def hub_connection_string(host_name: str, policy: HubPolicy) -> str:
    return (
        f"HostName={host_name};SharedAccessKeyName={policy.name};"
        f"SharedAccessKey={policy.primary_key}"
    )


def connection_string_parts(connection_string: str) -> dict[str, str]:
    """The ``name=value`` parts of a connection string, names lower-cased (a key's base64
    may end in ``=``, so only the first ``=`` of a part separates)."""
    parts: dict[str, str] = {}
    for part in connection_string.split(";"):
        name, separator, value = part.partition("=")
        if separator:
            parts[name.strip().lower()] = value.strip()
    return parts
