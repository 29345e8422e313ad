"""Wire models of the DPS APIs (camelCase JSON) and their mapping to the domain: shared by
the HTTPS and MQTT edges and the custom allocation webhook.

Input models accept explicit nulls everywhere (the Python SDK sends them) and leave the
required-field checks to the mapping, so that each gets a DPS-style message.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from dpsd.domain.attestation import (
    AttestationMechanism,
    AttestationType,
    SymmetricKeyAttestation,
    TpmAttestation,
    X509Attestation,
    X509CAReferences,
    X509Certificates,
    X509CertificateWithInfo,
)
from dpsd.domain.enrollment import (
    AllocationPolicy,
    CustomAllocationDefinition,
    DeviceCapabilities,
    EnrollmentSettings,
    IndividualEnrollment,
    IndividualEnrollmentDraft,
    ProvisioningStatus,
    ReprovisionPolicy,
)
from dpsd.domain.enrollment_group import EnrollmentGroup, EnrollmentGroupDraft
from dpsd.domain.errors import ValidationError
from dpsd.domain.registration import DeviceRegistrationState
from dpsd.domain.timestamps import format_timestamp
from dpsd.domain.tpm_public import TpmKeys
from dpsd.domain.x509 import CertificateInfo

JsonObject = dict[str, Any]


class _Wire(msgspec.Struct, rename="camel", omit_defaults=True):
    pass


class CertificateInfoWire(_Wire):
    subject_name: str | None = None
    sha1_thumbprint: str | None = None
    sha256_thumbprint: str | None = None
    issuer_name: str | None = None
    not_before_utc: str | None = None
    not_after_utc: str | None = None
    serial_number: str | None = None
    version: int | None = None


class CertificateWithInfoWire(_Wire):
    certificate: str | None = None
    info: CertificateInfoWire | None = None


class CertificatesWire(_Wire):
    primary: CertificateWithInfoWire | None = None
    secondary: CertificateWithInfoWire | None = None


class CAReferencesWire(_Wire):
    primary: str | None = None
    secondary: str | None = None


class X509Wire(_Wire):
    client_certificates: CertificatesWire | None = None
    signing_certificates: CertificatesWire | None = None
    ca_references: CAReferencesWire | None = None


class TpmWire(_Wire):
    endorsement_key: str | None = None
    storage_root_key: str | None = None


class SymmetricKeyWire(_Wire):
    primary_key: str | None = None
    secondary_key: str | None = None


class AttestationWire(_Wire):
    type: AttestationType | None = None
    tpm: TpmWire | None = None
    x509: X509Wire | None = None
    symmetric_key: SymmetricKeyWire | None = None


class CapabilitiesWire(_Wire):
    iot_edge: bool | None = None


class ReprovisionPolicyWire(_Wire):
    update_hub_assignment: bool | None = None
    migrate_device_data: bool | None = None


class CustomAllocationWire(_Wire):
    webhook_url: str | None = None
    api_version: str | None = None


class RegistrationStateWire(_Wire):
    registration_id: str | None = None
    created_date_time_utc: str | None = None
    assigned_hub: str | None = None
    device_id: str | None = None
    status: str | None = None
    substatus: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    last_updated_date_time_utc: str | None = None
    etag: str | None = None
    payload: Any = None


class _SettingsWire(_Wire):
    """The fields individual enrollments and enrollment groups share."""

    attestation: AttestationWire | None = None
    capabilities: CapabilitiesWire | None = None
    iot_hub_host_name: str | None = None
    initial_twin: JsonObject | None = None
    etag: str | None = None
    provisioning_status: ProvisioningStatus | None = None
    reprovision_policy: ReprovisionPolicyWire | None = None
    created_date_time_utc: str | None = None
    last_updated_date_time_utc: str | None = None
    allocation_policy: AllocationPolicy | None = None
    iot_hubs: list[str] | None = None
    custom_allocation_definition: CustomAllocationWire | None = None


class IndividualEnrollmentWire(_SettingsWire):
    registration_id: str | None = None
    device_id: str | None = None
    registration_state: RegistrationStateWire | None = None
    optional_device_information: JsonObject | None = None


class EnrollmentGroupWire(_SettingsWire):
    enrollment_group_id: str | None = None


class QuerySpecificationWire(_Wire):
    query: str | None = None


class BulkEnrollmentOperationWire(_Wire):
    mode: str | None = None
    enrollments: list[IndividualEnrollmentWire] | None = None


class BulkEnrollmentGroupOperationWire(_Wire):
    mode: str | None = None
    enrollment_groups: list[EnrollmentGroupWire] | None = None


class BulkErrorWire(_Wire):
    registration_id: str
    error_code: int
    error_status: str


class BulkResultWire(msgspec.Struct, rename="camel"):
    is_successful: bool
    errors: list[BulkErrorWire]


class BulkGroupErrorWire(_Wire):
    enrollment_group_id: str
    error_code: int
    error_status: str


class BulkGroupResultWire(msgspec.Struct, rename="camel"):
    is_successful: bool
    errors: list[BulkGroupErrorWire]


class ErrorDetailsWire(msgspec.Struct, rename="camel"):
    error_code: int
    tracking_id: str
    message: str
    timestamp_utc: str
    info: dict[str, str]


# --- wire -> domain -------------------------------------------------------------------


def _certificate_to_domain(wire: CertificateWithInfoWire | None) -> X509CertificateWithInfo | None:
    if wire is None:
        return None
    info = None
    if wire.info is not None and wire.info.sha256_thumbprint:
        info = CertificateInfo(
            subject_name=wire.info.subject_name or "",
            sha1_thumbprint=wire.info.sha1_thumbprint or "",
            sha256_thumbprint=wire.info.sha256_thumbprint,
            issuer_name=wire.info.issuer_name or "",
            not_before_utc=wire.info.not_before_utc or "",
            not_after_utc=wire.info.not_after_utc or "",
            serial_number=wire.info.serial_number or "",
            version=wire.info.version or 0,
        )
    return X509CertificateWithInfo(certificate=wire.certificate, info=info)


def _certificates_to_domain(wire: CertificatesWire | None) -> X509Certificates | None:
    if wire is None:
        return None
    return X509Certificates(
        primary=_certificate_to_domain(wire.primary),
        secondary=_certificate_to_domain(wire.secondary),
    )


def attestation_to_domain(wire: AttestationWire | None) -> AttestationMechanism:
    if wire is None:
        raise ValidationError("attestation is required")
    if wire.type is None:
        raise ValidationError("attestation.type is required")
    tpm = None
    if wire.tpm is not None:
        if not wire.tpm.endorsement_key:
            raise ValidationError("attestation.tpm.endorsementKey is required")
        tpm = TpmAttestation(wire.tpm.endorsement_key, wire.tpm.storage_root_key)
    x509 = None
    if wire.x509 is not None:
        references = wire.x509.ca_references
        x509 = X509Attestation(
            client_certificates=_certificates_to_domain(wire.x509.client_certificates),
            signing_certificates=_certificates_to_domain(wire.x509.signing_certificates),
            ca_references=None
            if references is None
            else X509CAReferences(references.primary, references.secondary),
        )
    symmetric_key = None
    if wire.symmetric_key is not None:
        symmetric_key = SymmetricKeyAttestation(
            wire.symmetric_key.primary_key, wire.symmetric_key.secondary_key
        )
    return AttestationMechanism(type=wire.type, tpm=tpm, x509=x509, symmetric_key=symmetric_key)


def _settings_to_domain(wire: _SettingsWire) -> EnrollmentSettings:
    capabilities = DeviceCapabilities()
    if wire.capabilities is not None:
        if wire.capabilities.iot_edge is None:
            raise ValidationError("capabilities.iotEdge is required when capabilities is given")
        capabilities = DeviceCapabilities(iot_edge=wire.capabilities.iot_edge)
    reprovision = ReprovisionPolicy()
    if wire.reprovision_policy is not None:
        reprovision = ReprovisionPolicy(
            update_hub_assignment=_default(wire.reprovision_policy.update_hub_assignment, True),
            migrate_device_data=_default(wire.reprovision_policy.migrate_device_data, True),
        )
    custom = None
    if wire.custom_allocation_definition is not None:
        definition = wire.custom_allocation_definition
        if not definition.webhook_url or not definition.api_version:
            raise ValidationError("customAllocationDefinition needs both webhookUrl and apiVersion")
        custom = CustomAllocationDefinition(definition.webhook_url, definition.api_version)
    return EnrollmentSettings(
        attestation=attestation_to_domain(wire.attestation),
        capabilities=capabilities,
        iot_hub_host_name=wire.iot_hub_host_name,
        initial_twin=wire.initial_twin,
        provisioning_status=wire.provisioning_status or ProvisioningStatus.ENABLED,
        reprovision_policy=reprovision,
        allocation_policy=wire.allocation_policy,
        iot_hubs=None if wire.iot_hubs is None else tuple(wire.iot_hubs),
        custom_allocation_definition=custom,
    )


def _default(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def enrollment_to_draft(wire: IndividualEnrollmentWire) -> IndividualEnrollmentDraft:
    """Read-only fields (etag, timestamps, registrationState) are ignored, as the real
    service does: clients echo whole records back."""
    if not wire.registration_id:
        raise ValidationError("registrationId is required")
    return IndividualEnrollmentDraft(
        registration_id=wire.registration_id,
        settings=_settings_to_domain(wire),
        device_id=wire.device_id,
        optional_device_information=wire.optional_device_information,
    )


def group_to_draft(wire: EnrollmentGroupWire) -> EnrollmentGroupDraft:
    if not wire.enrollment_group_id:
        raise ValidationError("enrollmentGroupId is required")
    return EnrollmentGroupDraft(
        enrollment_group_id=wire.enrollment_group_id, settings=_settings_to_domain(wire)
    )


# --- domain -> wire -------------------------------------------------------------------


def _info_to_wire(info: CertificateInfo | None) -> CertificateInfoWire | None:
    if info is None:
        return None
    return CertificateInfoWire(
        subject_name=info.subject_name,
        sha1_thumbprint=info.sha1_thumbprint,
        sha256_thumbprint=info.sha256_thumbprint,
        issuer_name=info.issuer_name,
        not_before_utc=info.not_before_utc,
        not_after_utc=info.not_after_utc,
        serial_number=info.serial_number,
        version=info.version,
    )


def _certificates_to_wire(
    certificates: X509Certificates | None, *, with_certificates: bool
) -> CertificatesWire | None:
    if certificates is None:
        return None

    def entry(value: X509CertificateWithInfo | None) -> CertificateWithInfoWire | None:
        if value is None:
            return None
        certificate = value.certificate if with_certificates else None
        return CertificateWithInfoWire(certificate=certificate, info=_info_to_wire(value.info))

    return CertificatesWire(
        primary=entry(certificates.primary), secondary=entry(certificates.secondary)
    )


def attestation_to_wire(
    mechanism: AttestationMechanism, *, with_certificates: bool = False
) -> AttestationWire:
    """Keys when present; certificates only as their info, unless ``with_certificates`` (the
    export extension of query, see docs/compatibility.md)."""
    x509 = mechanism.x509
    keys = mechanism.symmetric_key
    return AttestationWire(
        type=mechanism.type,
        tpm=None
        if mechanism.tpm is None
        else TpmWire(mechanism.tpm.endorsement_key, mechanism.tpm.storage_root_key),
        x509=None
        if x509 is None
        else X509Wire(
            client_certificates=_certificates_to_wire(
                x509.client_certificates, with_certificates=with_certificates
            ),
            signing_certificates=_certificates_to_wire(
                x509.signing_certificates, with_certificates=with_certificates
            ),
            ca_references=None
            if x509.ca_references is None
            else CAReferencesWire(x509.ca_references.primary, x509.ca_references.secondary),
        ),
        symmetric_key=None
        if keys is None
        else SymmetricKeyWire(keys.primary_key, keys.secondary_key),
    )


def registration_state_to_wire(state: DeviceRegistrationState) -> RegistrationStateWire:
    return RegistrationStateWire(
        registration_id=state.registration_id,
        created_date_time_utc=format_timestamp(state.created),
        assigned_hub=state.assigned_hub,
        device_id=state.device_id,
        status=state.status.value,
        substatus=None if state.substatus is None else state.substatus.value,
        error_code=state.error_code,
        error_message=state.error_message,
        last_updated_date_time_utc=format_timestamp(state.last_updated),
        etag=state.etag,
        payload=state.payload,
    )


class Disclosure(enum.Enum):
    """How much of a record's attestation a response shows."""

    PUBLIC = "public"  # GET and query: no keys, certificates as their info
    KEYS = "keys"  # PUT responses: the keys too (clients read generated keys there)
    ALL = "all"  # the export extension of query: keys and certificates


def _settings_fields(settings: EnrollmentSettings, *, disclosure: Disclosure) -> dict[str, Any]:
    attestation = (
        settings.attestation
        if disclosure is not Disclosure.PUBLIC
        else settings.attestation.without_secrets()
    )
    custom = settings.custom_allocation_definition
    return {
        "attestation": attestation_to_wire(
            attestation, with_certificates=disclosure is Disclosure.ALL
        ),
        "capabilities": CapabilitiesWire(iot_edge=settings.capabilities.iot_edge),
        "iot_hub_host_name": settings.iot_hub_host_name,
        "initial_twin": settings.initial_twin,
        "provisioning_status": settings.provisioning_status,
        "reprovision_policy": ReprovisionPolicyWire(
            update_hub_assignment=settings.reprovision_policy.update_hub_assignment,
            migrate_device_data=settings.reprovision_policy.migrate_device_data,
        ),
        "allocation_policy": settings.allocation_policy,
        "iot_hubs": None if settings.iot_hubs is None else list(settings.iot_hubs),
        "custom_allocation_definition": None
        if custom is None
        else CustomAllocationWire(custom.webhook_url, custom.api_version),
    }


def enrollment_to_wire(
    enrollment: IndividualEnrollment, disclosure: Disclosure
) -> IndividualEnrollmentWire:
    """How much of the attestation to show: see Disclosure."""
    state = enrollment.registration_state
    return IndividualEnrollmentWire(
        registration_id=enrollment.registration_id,
        device_id=enrollment.device_id,
        registration_state=None if state is None else registration_state_to_wire(state),
        optional_device_information=enrollment.optional_device_information,
        etag=enrollment.etag,
        created_date_time_utc=format_timestamp(enrollment.created),
        last_updated_date_time_utc=format_timestamp(enrollment.last_updated),
        **_settings_fields(enrollment.settings, disclosure=disclosure),
    )


def group_to_wire(group: EnrollmentGroup, disclosure: Disclosure) -> EnrollmentGroupWire:
    return EnrollmentGroupWire(
        enrollment_group_id=group.enrollment_group_id,
        etag=group.etag,
        created_date_time_utc=format_timestamp(group.created),
        last_updated_date_time_utc=format_timestamp(group.last_updated),
        **_settings_fields(group.settings, disclosure=disclosure),
    )


# --- the device registration API ------------------------------------------------------


class DeviceRegistrationWire(_Wire):
    registration_id: str | None = None
    tpm: TpmWire | None = None
    payload: Any = None


class GroupReferenceWire(_Wire):
    enrollment_group_id: str | None = None


class TpmResultWire(_Wire):
    authentication_key: str


class DeviceRegistrationResultWire(RegistrationStateWire):
    """What a device is told: its registration state, the group that attested it, and for
    a TPM device assigned, its hub key in an activation blob."""

    symmetric_key: GroupReferenceWire | None = None
    x509: GroupReferenceWire | None = None
    tpm: TpmResultWire | None = None


class TpmChallengeWire(_Wire):
    """The 401 answer to a TPM device's first registration request: no ``status``, which
    the C SDK would read as a failure."""

    authentication_key: str
    key_name: str
    message: str


class RegistrationOperationStatusWire(_Wire):
    operation_id: str
    status: str
    registration_state: DeviceRegistrationResultWire | None = None


def tpm_keys(body: DeviceRegistrationWire) -> TpmKeys | None:
    """The TPM keys a registration body carries, if any."""
    if body.tpm is None:
        return None
    return TpmKeys(body.tpm.endorsement_key, body.tpm.storage_root_key)


def result_to_wire(
    state: DeviceRegistrationState,
    attestation_type: str | None,
    authentication_key: str | None = None,
) -> DeviceRegistrationResultWire:
    group = (
        None if state.enrollment_group_id is None else GroupReferenceWire(state.enrollment_group_id)
    )
    return DeviceRegistrationResultWire(
        **msgspec.structs.asdict(registration_state_to_wire(state)),
        symmetric_key=group if attestation_type == AttestationType.SYMMETRIC_KEY.value else None,
        x509=group if attestation_type == AttestationType.X509.value else None,
        tpm=None if authentication_key is None else TpmResultWire(authentication_key),
    )
