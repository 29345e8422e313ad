"""Record bodies from command-line flags: attestation, settings, and what a PUT sends back."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpsd.cli.records import (
    AllocationPolicy,
    AttestationFlags,
    AttestationType,
    ProvisioningStatus,
    Record,
    ReprovisionPolicy,
    SettingsFlags,
    apply_settings,
    attestation_from,
    without_server_fields,
)

PRIMARY = "cHJpbWFyeS1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="
SECONDARY = "c2Vjb25kYXJ5LWtleS0wMTIzNDU2Nzg5YWJjZGU="
STORED_KEYS = {"primaryKey": "c3RvcmVkLXByaW1hcnk=", "secondaryKey": "c3RvcmVkLXNlY29uZGFyeQ=="}
INFO = {"subjectName": "CN=device", "sha256Thumbprint": "AB" * 32}


def pem_file(folder: Path, name: str) -> tuple[Path, str]:
    """A certificate file; the records module only reads it (the service parses it)."""
    text = f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"
    path = folder / f"{name}.pem"
    path.write_text(text)
    return path, text


def symmetric_mechanism() -> Record:
    return {"type": "symmetricKey", "symmetricKey": dict(STORED_KEYS)}


def x509_mechanism(field: str) -> Record:
    return {"type": "x509", "x509": {field: {"primary": {"info": dict(INFO)}}}}


# --- attestation_from: create ---------------------------------------------------------------


def test_no_flags_make_a_symmetric_key_attestation_the_service_fills() -> None:
    assert attestation_from(AttestationFlags(), group=False, current=None) == {
        "type": "symmetricKey"
    }


def test_given_keys_are_sent() -> None:
    flags = AttestationFlags(primary_key=PRIMARY, secondary_key=SECONDARY)
    assert attestation_from(flags, group=False, current=None) == {
        "type": "symmetricKey",
        "symmetricKey": {"primaryKey": PRIMARY, "secondaryKey": SECONDARY},
    }


def test_one_given_key_leaves_the_other_to_the_service() -> None:
    flags = AttestationFlags(secondary_key=SECONDARY)
    assert attestation_from(flags, group=True, current=None) == {
        "type": "symmetricKey",
        "symmetricKey": {"secondaryKey": SECONDARY},
    }


@pytest.mark.parametrize(
    ("group", "field"), [(False, "clientCertificates"), (True, "signingCertificates")]
)
def test_certificate_files_are_client_certificates_or_signing_certificates(
    tmp_path: Path, group: bool, field: str
) -> None:
    primary, primary_pem = pem_file(tmp_path, "primary")
    secondary, secondary_pem = pem_file(tmp_path, "secondary")
    flags = AttestationFlags(certificate=primary, secondary_certificate=secondary)
    assert attestation_from(flags, group=group, current=None) == {
        "type": "x509",
        "x509": {
            field: {
                "primary": {"certificate": primary_pem},
                "secondary": {"certificate": secondary_pem},
            }
        },
    }


def test_ca_names_are_ca_references() -> None:
    flags = AttestationFlags(ca_name="contoso", secondary_ca_name="fabrikam")
    assert attestation_from(flags, group=True, current=None) == {
        "type": "x509",
        "x509": {"caReferences": {"primary": "contoso", "secondary": "fabrikam"}},
    }


def test_a_secondary_ca_name_alone_implies_x509() -> None:
    flags = AttestationFlags(secondary_ca_name="fabrikam")
    assert attestation_from(flags, group=True, current=None) == {
        "type": "x509",
        "x509": {"caReferences": {"secondary": "fabrikam"}},
    }


def test_an_endorsement_key_implies_tpm() -> None:
    flags = AttestationFlags(endorsement_key="AToAAQALAAMAsgAgg3GXZ0SEs")
    assert attestation_from(flags, group=False, current=None) == {
        "type": "tpm",
        "tpm": {"endorsementKey": "AToAAQALAAMAsgAgg3GXZ0SEs"},
    }


def test_an_explicit_type_wins_over_the_implied_one(tmp_path: Path) -> None:
    assert attestation_from(
        AttestationFlags(type=AttestationType.none), group=False, current=None
    ) == {"type": "none"}
    assert attestation_from(
        AttestationFlags(type=AttestationType.x509), group=False, current=None
    ) == {"type": "x509", "x509": {}}


def test_an_unreadable_certificate_file_is_a_value_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"cannot read .*missing\.pem"):
        attestation_from(AttestationFlags(certificate=missing), group=False, current=None)


# --- attestation_from: update ---------------------------------------------------------------


def test_an_update_keeps_the_key_not_named() -> None:
    flags = AttestationFlags(primary_key=PRIMARY)
    assert attestation_from(flags, group=False, current=symmetric_mechanism()) == {
        "type": "symmetricKey",
        "symmetricKey": {"primaryKey": PRIMARY, "secondaryKey": STORED_KEYS["secondaryKey"]},
    }


def test_an_update_naming_the_same_type_keeps_everything() -> None:
    flags = AttestationFlags(type=AttestationType.symmetric_key)
    assert attestation_from(flags, group=False, current=symmetric_mechanism()) == (
        symmetric_mechanism()
    )


def test_an_update_adds_a_secondary_certificate_and_keeps_the_primary(tmp_path: Path) -> None:
    secondary, secondary_pem = pem_file(tmp_path, "secondary")
    current = x509_mechanism("clientCertificates")
    flags = AttestationFlags(secondary_certificate=secondary)
    assert attestation_from(flags, group=False, current=current) == {
        "type": "x509",
        "x509": {
            "clientCertificates": {
                "primary": {"info": INFO},
                "secondary": {"certificate": secondary_pem},
            },
        },
    }


def test_an_update_replaces_the_certificate_named(tmp_path: Path) -> None:
    primary, primary_pem = pem_file(tmp_path, "renewed")
    current = x509_mechanism("signingCertificates")
    flags = AttestationFlags(certificate=primary)
    assert attestation_from(flags, group=True, current=current) == {
        "type": "x509",
        "x509": {"signingCertificates": {"primary": {"certificate": primary_pem}}},
    }


def test_an_update_adds_a_secondary_ca_reference_and_keeps_the_primary() -> None:
    current = {"type": "x509", "x509": {"caReferences": {"primary": "contoso"}}}
    flags = AttestationFlags(secondary_ca_name="fabrikam")
    assert attestation_from(flags, group=True, current=current) == {
        "type": "x509",
        "x509": {"caReferences": {"primary": "contoso", "secondary": "fabrikam"}},
    }


def test_a_type_change_replaces_the_attestation(tmp_path: Path) -> None:
    certificate, pem = pem_file(tmp_path, "device")
    flags = AttestationFlags(type=AttestationType.x509, certificate=certificate)
    assert attestation_from(flags, group=False, current=symmetric_mechanism()) == {
        "type": "x509",
        "x509": {"clientCertificates": {"primary": {"certificate": pem}}},
    }
    back = AttestationFlags(type=AttestationType.symmetric_key)
    assert attestation_from(back, group=False, current=x509_mechanism("clientCertificates")) == {
        "type": "symmetricKey"
    }


def test_flags_of_another_type_change_the_type_as_on_create(tmp_path: Path) -> None:
    """A certificate given to a symmetric-key enrollment is not silently dropped."""
    certificate, pem = pem_file(tmp_path, "device")
    flags = AttestationFlags(certificate=certificate)
    assert attestation_from(flags, group=False, current=symmetric_mechanism()) == {
        "type": "x509",
        "x509": {"clientCertificates": {"primary": {"certificate": pem}}},
    }
    keys = AttestationFlags(primary_key=PRIMARY)
    assert attestation_from(keys, group=False, current=x509_mechanism("clientCertificates")) == {
        "type": "symmetricKey",
        "symmetricKey": {"primaryKey": PRIMARY},
    }


def test_an_update_of_a_tpm_endorsement_key() -> None:
    current = {"type": "tpm", "tpm": {"endorsementKey": "b2xk", "storageRootKey": "c3Jr"}}
    flags = AttestationFlags(endorsement_key="bmV3")
    assert attestation_from(flags, group=False, current=current) == {
        "type": "tpm",
        "tpm": {"endorsementKey": "bmV3", "storageRootKey": "c3Jr"},
    }


def test_the_current_mechanism_is_not_changed_in_place() -> None:
    current = symmetric_mechanism()
    attestation_from(AttestationFlags(primary_key=PRIMARY), group=False, current=current)
    assert current == symmetric_mechanism()


# --- apply_settings -------------------------------------------------------------------------

BASE: Record = {
    "registrationId": "device-1",
    "attestation": {"type": "symmetricKey"},
    "deviceId": "old",
    "capabilities": {"iotEdge": False},
    "customAllocationDefinition": {"webhookUrl": "https://old.example/api", "apiVersion": "v1"},
}


def test_no_settings_change_nothing() -> None:
    assert apply_settings(BASE, SettingsFlags()) == BASE


def test_every_setting_is_laid_over_the_record(tmp_path: Path) -> None:
    twin = tmp_path / "twin.json"
    twin.write_text('{"tags": {"site": "oslo"}, "properties": {"desired": {"rate": 5}}}')
    flags = SettingsFlags(
        device_id="new",
        provisioning_status=ProvisioningStatus.disabled,
        allocation_policy=AllocationPolicy.geo_latency,
        iot_hubs=("a.example.net", "b.example.net"),
        initial_twin=twin,
        reprovision_policy=ReprovisionPolicy.never,
        edge_enabled=True,
        webhook_url="https://new.example/api",
    )
    assert apply_settings(BASE, flags) == {
        "registrationId": "device-1",
        "attestation": {"type": "symmetricKey"},
        "deviceId": "new",
        "provisioningStatus": "disabled",
        "allocationPolicy": "geoLatency",
        "iotHubs": ["a.example.net", "b.example.net"],
        "initialTwin": {"tags": {"site": "oslo"}, "properties": {"desired": {"rate": 5}}},
        "reprovisionPolicy": {"updateHubAssignment": False, "migrateDeviceData": False},
        "capabilities": {"iotEdge": True},
        "customAllocationDefinition": {"webhookUrl": "https://new.example/api", "apiVersion": "v1"},
    }
    assert BASE["deviceId"] == "old"  # the record given is not changed in place


def test_enum_settings_are_sent_as_plain_strings() -> None:
    flags = SettingsFlags(
        provisioning_status=ProvisioningStatus.enabled, allocation_policy=AllocationPolicy.custom
    )
    updated = apply_settings({}, flags)
    assert type(updated["provisioningStatus"]) is str
    assert type(updated["allocationPolicy"]) is str
    assert updated == {"provisioningStatus": "enabled", "allocationPolicy": "custom"}


def test_an_empty_hub_list_is_sent() -> None:
    assert apply_settings({"iotHubs": ["a.example.net"]}, SettingsFlags(iot_hubs=())) == {
        "iotHubs": []
    }


def test_a_webhook_api_version_alone_keeps_the_url() -> None:
    updated = apply_settings(BASE, SettingsFlags(webhook_api_version="2021-10-01"))
    assert updated["customAllocationDefinition"] == {
        "webhookUrl": "https://old.example/api",
        "apiVersion": "2021-10-01",
    }


def test_edge_can_be_turned_off() -> None:
    on = {"capabilities": {"iotEdge": True}}
    assert apply_settings(on, SettingsFlags(edge_enabled=False)) == {
        "capabilities": {"iotEdge": False}
    }


@pytest.mark.parametrize(
    ("policy", "wire"),
    [
        (ReprovisionPolicy.migrate, {"updateHubAssignment": True, "migrateDeviceData": True}),
        (ReprovisionPolicy.reset, {"updateHubAssignment": True, "migrateDeviceData": False}),
        (ReprovisionPolicy.never, {"updateHubAssignment": False, "migrateDeviceData": False}),
    ],
)
def test_reprovision_policies_map_to_the_two_wire_flags(
    policy: ReprovisionPolicy, wire: dict[str, bool]
) -> None:
    assert apply_settings({}, SettingsFlags(reprovision_policy=policy)) == {
        "reprovisionPolicy": wire
    }


def test_reprovision_policy_names_are_those_of_az_iot_dps() -> None:
    assert ReprovisionPolicy("reprovisionandmigratedata") is ReprovisionPolicy.migrate
    assert ReprovisionPolicy("reprovisionandresetdata") is ReprovisionPolicy.reset
    assert ReprovisionPolicy("never") is ReprovisionPolicy.never


def test_a_missing_initial_twin_file(tmp_path: Path) -> None:
    missing = tmp_path / "twin.json"
    with pytest.raises(ValueError, match=r"^cannot read .*twin\.json: "):
        apply_settings({}, SettingsFlags(initial_twin=missing))


def test_an_initial_twin_file_that_is_not_json(tmp_path: Path) -> None:
    twin = tmp_path / "twin.json"
    twin.write_text('{"tags": ')
    with pytest.raises(ValueError, match=r"twin\.json is not JSON: "):
        apply_settings({}, SettingsFlags(initial_twin=twin))


def test_an_initial_twin_file_that_is_not_utf8(tmp_path: Path) -> None:
    twin = tmp_path / "twin.json"
    twin.write_bytes(b'{"tags": "\xff"}')
    with pytest.raises(ValueError, match=r"^cannot read .*twin\.json: "):
        apply_settings({}, SettingsFlags(initial_twin=twin))


@pytest.mark.parametrize("text", ["[1, 2]", '"twin"', "null", "3"])
def test_an_initial_twin_file_that_is_not_an_object(tmp_path: Path, text: str) -> None:
    twin = tmp_path / "twin.json"
    twin.write_text(text)
    with pytest.raises(ValueError, match=r"twin\.json should hold a JSON object$"):
        apply_settings({}, SettingsFlags(initial_twin=twin))


# --- without_server_fields ------------------------------------------------------------------


def test_server_fields_are_left_out_of_what_is_sent_back() -> None:
    returned = {
        **BASE,
        "etag": '"abc"',
        "createdDateTimeUtc": "2024-01-01T00:00:00Z",
        "lastUpdatedDateTimeUtc": "2024-01-02T00:00:00Z",
        "registrationState": {"registrationId": "device-1", "status": "assigned"},
    }
    assert without_server_fields(returned) == BASE
    assert "etag" in returned  # a copy, not the record itself


def test_a_record_without_server_fields_is_unchanged() -> None:
    assert without_server_fields(BASE) == BASE
