"""IoT hubs linked to the service: where devices can be assigned."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dpsd.domain.errors import ValidationError

MIN_WEIGHT = 1
MAX_WEIGHT = 1000
MAX_LINKED_HUBS = 50
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::[0-9]{1,5})?"
)


@dataclass(frozen=True, slots=True)
class LinkedHub:
    """``apply_allocation_policy`` false: the hub takes part only when an enrollment names it.
    ``location`` is what geoLatency allocation compares with the service's own location."""

    host_name: str
    etag: str
    allocation_weight: int = 1
    apply_allocation_policy: bool = True
    location: str | None = None
    connection_string: str | None = None


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


def connection_string_host(connection_string: str) -> str | None:
    """The HostName an IoT hub connection string names, if any."""
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "hostname":
            return value.strip()
    return None
