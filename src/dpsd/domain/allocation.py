"""Choosing an IoT hub for a device: hashed, static and geoLatency allocation.

Pure functions of the linked hubs, the enrollment and the registration id. Custom allocation
asks a webhook instead (a port of the use cases).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from dpsd.domain.enrollment import AllocationPolicy, EnrollmentSettings
from dpsd.domain.errors import DomainError
from dpsd.domain.hub import LinkedHub

NO_HUB_ERROR_CODE = 400208


class AllocationFailed(DomainError):
    """No hub can take the device; ``error_code`` goes into the registration state."""

    def __init__(self, message: str, error_code: int = NO_HUB_ERROR_CODE) -> None:
        super().__init__(message)
        self.error_code = error_code


def candidate_hubs(settings: EnrollmentSettings, linked: Sequence[LinkedHub]) -> list[LinkedHub]:
    """The enrollment's hubs if it names any, else every hub that applies the policy."""
    by_name = {hub.host_name.lower(): hub for hub in linked}
    named = list(settings.iot_hubs or ())
    if not named and settings.iot_hub_host_name:
        named = [settings.iot_hub_host_name]
    if named:
        hubs = [by_name[name.lower()] for name in named if name.lower() in by_name]
        if not hubs:
            raise AllocationFailed(
                f"none of the enrollment's IoT hubs is linked: {', '.join(named)}"
            )
        return hubs
    hubs = [hub for hub in linked if hub.apply_allocation_policy]
    if not hubs:
        raise AllocationFailed("no linked IoT hub takes part in allocation")
    return hubs


def _score(hub: LinkedHub, registration_id: str) -> float:
    """Weighted rendezvous hashing: each device keeps its hub while the set of hubs holds
    still, and a hub's share of devices follows its weight."""
    digest = hashlib.sha256(f"{hub.host_name.lower()}\n{registration_id.lower()}".encode()).digest()
    uniform = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    return hub.allocation_weight / -math.log(uniform)


def hashed(hubs: Sequence[LinkedHub], registration_id: str) -> LinkedHub:
    if len(hubs) == 1:
        return hubs[0]  # nothing to weigh: spare the hash
    return max(hubs, key=lambda hub: _score(hub, registration_id))


def geo_latency(
    hubs: Sequence[LinkedHub], registration_id: str, service_location: str | None
) -> LinkedHub:
    """Without Azure regions to measure, the nearest hubs are those whose configured location
    is the service's own; ties, and no match, fall back to the weighted hash."""
    if service_location:
        near = [hub for hub in hubs if (hub.location or "").lower() == service_location.lower()]
        if near:
            return hashed(near, registration_id)
    return hashed(hubs, registration_id)


def allocate(
    policy: AllocationPolicy,
    hubs: Sequence[LinkedHub],
    registration_id: str,
    service_location: str | None,
) -> LinkedHub:
    match policy:
        case AllocationPolicy.STATIC:
            if len(hubs) != 1:
                raise AllocationFailed(
                    "static allocation needs exactly one IoT hub on the enrollment"
                )
            return hubs[0]
        case AllocationPolicy.GEO_LATENCY:
            return geo_latency(hubs, registration_id, service_location)
        case AllocationPolicy.HASHED:
            return hashed(hubs, registration_id)
        case AllocationPolicy.CUSTOM:
            raise AllocationFailed("custom allocation is decided by the enrollment's webhook")
