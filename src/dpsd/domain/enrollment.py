"""Individual enrollments: the record that lets one device provision itself."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dpsd.domain.attestation import AttestationMechanism
from dpsd.domain.errors import ValidationError
from dpsd.domain.registration import DeviceRegistrationState

JsonObject = dict[str, Any]

MAX_DEVICE_ID_LENGTH = 128
_SPACE = re.compile(r"\s")
_DEVICE_ID = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@$']+")
_KNOWN_WEBHOOK_API_VERSIONS = frozenset(
    {"2018-09-01-preview", "2018-11-01", "2019-03-31", "2021-06-01", "2021-10-01"}
)


class ProvisioningStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class AllocationPolicy(enum.StrEnum):
    HASHED = "hashed"
    GEO_LATENCY = "geoLatency"
    STATIC = "static"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    iot_edge: bool = False


@dataclass(frozen=True, slots=True)
class ReprovisionPolicy:
    update_hub_assignment: bool = True
    migrate_device_data: bool = True


@dataclass(frozen=True, slots=True)
class CustomAllocationDefinition:
    webhook_url: str
    api_version: str


@dataclass(frozen=True, slots=True)
class EnrollmentSettings:
    """What an operator chooses for an enrollment; shared by individual records and groups."""

    attestation: AttestationMechanism
    capabilities: DeviceCapabilities = field(default_factory=DeviceCapabilities)
    iot_hub_host_name: str | None = None
    initial_twin: JsonObject | None = None
    provisioning_status: ProvisioningStatus = ProvisioningStatus.ENABLED
    reprovision_policy: ReprovisionPolicy = field(default_factory=ReprovisionPolicy)
    allocation_policy: AllocationPolicy | None = None
    iot_hubs: tuple[str, ...] | None = None
    custom_allocation_definition: CustomAllocationDefinition | None = None


@dataclass(frozen=True, slots=True)
class IndividualEnrollmentDraft:
    """An individual enrollment as a client sends it: no server-set fields."""

    registration_id: str
    settings: EnrollmentSettings
    device_id: str | None = None
    optional_device_information: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class IndividualEnrollment:
    """An individual enrollment as stored: complete attestation, etag and timestamps."""

    registration_id: str
    settings: EnrollmentSettings
    etag: str
    created: datetime
    last_updated: datetime
    device_id: str | None = None
    optional_device_information: JsonObject | None = None
    registration_state: DeviceRegistrationState | None = None


def check_settings(settings: EnrollmentSettings) -> None:
    """Rules that span fields: allocation policy against hubs and webhook."""
    policy = settings.allocation_policy
    definition = settings.custom_allocation_definition
    if policy == AllocationPolicy.CUSTOM and definition is None:
        raise ValidationError("allocationPolicy 'custom' needs a customAllocationDefinition")
    if definition is not None:
        _check_webhook(definition)
    if (
        policy == AllocationPolicy.STATIC
        and settings.iot_hubs is not None
        and len(settings.iot_hubs) > 1
    ):
        raise ValidationError("allocationPolicy 'static' takes exactly one IoT hub in iotHubs")
    for hub in settings.iot_hubs or ():
        if not hub or len(hub) > 255 or _SPACE.search(hub):
            raise ValidationError(f"iotHubs entry {hub!r} is not a host name")


def _check_webhook(definition: CustomAllocationDefinition) -> None:
    if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", definition.webhook_url):
        raise ValidationError(
            "customAllocationDefinition.webhookUrl must be an absolute http or https URL"
        )
    if definition.api_version not in _KNOWN_WEBHOOK_API_VERSIONS:
        known = ", ".join(sorted(_KNOWN_WEBHOOK_API_VERSIONS))
        raise ValidationError(
            f"customAllocationDefinition.apiVersion {definition.api_version!r} "
            f"is not one of {known}"
        )


def check_device_id(device_id: str) -> None:
    if len(device_id) > MAX_DEVICE_ID_LENGTH or not _DEVICE_ID.fullmatch(device_id):
        raise ValidationError(
            f"deviceId {device_id!r} is invalid: at most {MAX_DEVICE_ID_LENGTH} characters of "
            "letters, digits and - : . + % _ # * ? ! ( ) , = @ $ '"
        )
