"""Enrollment and enrollment group bodies built from command-line flags.

``create`` builds a record from the flags; ``update`` lays the flags that were given over the
record the service holds (with its keys), so that what was not mentioned stays as it is.
The service validates what it receives; these functions only arrange it and read files.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class AttestationType(enum.StrEnum):
    symmetric_key = "symmetricKey"
    x509 = "x509"
    tpm = "tpm"
    none = "none"


class ProvisioningStatus(enum.StrEnum):
    enabled = "enabled"
    disabled = "disabled"


class AllocationPolicy(enum.StrEnum):
    hashed = "hashed"
    static = "static"
    geo_latency = "geoLatency"
    custom = "custom"


class ReprovisionPolicy(enum.StrEnum):
    """The names ``az iot dps`` gives the two reprovision flags together."""

    migrate = "reprovisionandmigratedata"
    reset = "reprovisionandresetdata"
    never = "never"

    def as_wire(self) -> dict[str, bool]:
        return {
            "updateHubAssignment": self is not ReprovisionPolicy.never,
            "migrateDeviceData": self is ReprovisionPolicy.migrate,
        }


@dataclass(frozen=True, slots=True)
class AttestationFlags:
    """What the flags say of the attestation; None is "not given"."""

    type: AttestationType | None = None
    primary_key: str | None = None
    secondary_key: str | None = None
    certificate: Path | None = None
    secondary_certificate: Path | None = None
    ca_name: str | None = None
    secondary_ca_name: str | None = None
    endorsement_key: str | None = None

    def given(self) -> bool:
        return any(getattr(self, name) is not None for name in self.__slots__)

    def named_type(self) -> AttestationType | None:
        """The type given, or the one whose parts the flags name; None when they name none."""
        if self.type is not None:
            return self.type
        x509 = (self.certificate, self.secondary_certificate, self.ca_name, self.secondary_ca_name)
        if any(value is not None for value in x509):
            return AttestationType.x509
        if self.endorsement_key is not None:
            return AttestationType.tpm
        if self.primary_key is not None or self.secondary_key is not None:
            return AttestationType.symmetric_key
        return None

    def implied_type(self) -> AttestationType:
        return self.named_type() or AttestationType.symmetric_key


@dataclass(frozen=True, slots=True)
class SettingsFlags:
    """The settings flags shared by enrollments and groups; None is "not given"."""

    device_id: str | None = None
    provisioning_status: ProvisioningStatus | None = None
    allocation_policy: AllocationPolicy | None = None
    iot_hubs: tuple[str, ...] | None = None
    initial_twin: Path | None = None
    reprovision_policy: ReprovisionPolicy | None = None
    edge_enabled: bool | None = None
    webhook_url: str | None = None
    webhook_api_version: str | None = None


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def read_json_object(path: Path) -> Record:
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return value


def _certificates(flags: AttestationFlags, field: str) -> Record:
    """``{field: {"primary": {"certificate": PEM}, "secondary"?: ...}}`` from the files."""
    chosen: Record = {}
    for slot, path in (("primary", flags.certificate), ("secondary", flags.secondary_certificate)):
        if path is not None:
            chosen[slot] = {"certificate": read_text(path)}
    return {field: chosen} if chosen else {}


def _ca_references(flags: AttestationFlags) -> Record:
    names = {"primary": flags.ca_name, "secondary": flags.secondary_ca_name}
    chosen = {slot: name for slot, name in names.items() if name is not None}
    return {"caReferences": chosen} if chosen else {}


def _x509(flags: AttestationFlags, group: bool, current: Record) -> Record:
    """``current`` with the certificates and CA references the flags name, slot by slot."""
    field = "signingCertificates" if group else "clientCertificates"
    given = {**_certificates(flags, field), **_ca_references(flags)}
    return {
        **current,
        **{name: {**(current.get(name) or {}), **slots} for name, slots in given.items()},
    }


def _keys(flags: AttestationFlags) -> Record:
    keys = {"primaryKey": flags.primary_key, "secondaryKey": flags.secondary_key}
    return {name: key for name, key in keys.items() if key is not None}


def attestation_from(flags: AttestationFlags, *, group: bool, current: Record | None) -> Record:
    """The attestation the flags describe; with ``current`` (the stored mechanism, keys
    included), the flags change only the parts they name."""
    kind = flags.named_type() or (
        current["type"] if current is not None else AttestationType.symmetric_key
    )
    base: Record = dict(current) if current is not None and current["type"] == kind else {}
    attestation: Record = {**base, "type": str(kind)}
    if kind == AttestationType.symmetric_key:
        keys = _keys(flags)
        if keys:
            attestation["symmetricKey"] = {**(base.get("symmetricKey") or {}), **keys}
    elif kind == AttestationType.x509:
        attestation["x509"] = _x509(flags, group, base.get("x509") or {})
    elif kind == AttestationType.tpm and flags.endorsement_key is not None:
        attestation["tpm"] = {**(base.get("tpm") or {}), "endorsementKey": flags.endorsement_key}
    return attestation


def apply_settings(record: Record, flags: SettingsFlags) -> Record:
    """``record`` with every given setting laid over it."""
    updated = dict(record)
    plain = {
        "deviceId": flags.device_id,
        "provisioningStatus": flags.provisioning_status,
        "allocationPolicy": flags.allocation_policy,
        "iotHubs": list(flags.iot_hubs) if flags.iot_hubs is not None else None,
    }
    updated.update(
        {
            name: str(v) if isinstance(v, enum.Enum) else v
            for name, v in plain.items()
            if v is not None
        }
    )
    if flags.initial_twin is not None:
        updated["initialTwin"] = read_json_object(flags.initial_twin)
    if flags.reprovision_policy is not None:
        updated["reprovisionPolicy"] = flags.reprovision_policy.as_wire()
    if flags.edge_enabled is not None:
        updated["capabilities"] = {"iotEdge": flags.edge_enabled}
    webhook = {"webhookUrl": flags.webhook_url, "apiVersion": flags.webhook_api_version}
    if any(value is not None for value in webhook.values()):
        current = updated.get("customAllocationDefinition") or {}
        given = {name: value for name, value in webhook.items() if value is not None}
        updated["customAllocationDefinition"] = {**current, **given}
    return updated


def without_server_fields(record: Record) -> Record:
    """What a PUT sends back of a record the service returned."""
    server_fields = ("etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "registrationState")
    return {name: value for name, value in record.items() if name not in server_fields}
