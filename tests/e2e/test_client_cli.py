"""The client commands (``dpsd enrollment|group|registration|device-key``) against a real
``dpsd serve``: run in-process with a connection string and the dpsd CA, or by default
against the dpsd serving a data dir, and once through the real entry point."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.certs import issue
from tests.cli_imports import NEVER_FOR_A_CLIENT_COMMAND, run_dpsd_command
from tests.e2e.cli_runner import error_line, invoke, output_json, succeeded, target
from tests.e2e.process import COMMAND_TIMEOUT, DPSD, DpsdProcess, dpsd_env
from tests.tpm.soft_tpm import SoftTpm

pytestmark = pytest.mark.e2e

Record = dict[str, Any]
SERVER_FIELDS = ("etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_key(seed: str) -> str:
    return base64.b64encode(hashlib.sha512(seed.encode()).digest()).decode()


def device_key(group_key: str, registration_id: str) -> str:
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def dpsd_json(info: dict[str, Any], *args: str) -> Any:
    """``dpsd ARGS -o json`` against the module's server."""
    return output_json(invoke(*args, "-o", "json", *target(info)))


def without(record: Record, *names: str) -> Record:
    return {name: value for name, value in record.items() if name not in names}


def certificate_file(folder: Path, common_name: str, *, ca: bool = False) -> Path:
    path = folder / f"{common_name}.pem"
    path.write_text(issue(common_name, ca=ca).pem)
    return path


# --- enrollments ----------------------------------------------------------------------------


def test_create_generates_keys_that_show_leaves_out(dpsd_info: dict[str, Any]) -> None:
    device = new_id("dev")
    created = dpsd_json(dpsd_info, "enrollment", "create", device)
    assert created["registrationId"] == device
    assert created["provisioningStatus"] == "enabled"
    keys = created["attestation"]["symmetricKey"]
    assert {len(base64.b64decode(keys[name])) for name in ("primaryKey", "secondaryKey")} == {64}

    shown = dpsd_json(dpsd_info, "enrollment", "show", device)
    assert shown["attestation"] == {"type": "symmetricKey"}
    assert without(shown, "attestation") == without(created, "attestation")
    with_keys = dpsd_json(dpsd_info, "enrollment", "show", device, "--show-keys")
    assert with_keys["attestation"] == {"type": "symmetricKey", "symmetricKey": keys}
    assert dpsd_json(dpsd_info, "enrollment", "keys", device) == with_keys["attestation"]

    table = succeeded(invoke("enrollment", "keys", device, *target(dpsd_info))).stdout
    assert keys["primaryKey"] in table
    assert keys["secondaryKey"] in table


def test_tables_show_keys_on_create_and_when_asked(dpsd_info: dict[str, Any]) -> None:
    device = new_id("tab")
    created = succeeded(invoke("enrollment", "create", device, *target(dpsd_info))).stdout
    assert re.search(rf"^registration id +{device}$", created, re.MULTILINE), created
    primary = re.search(r"^primary key +(\S+)$", created, re.MULTILINE)
    assert primary is not None, created
    assert re.search(r"^secondary key +\S+$", created, re.MULTILINE), created
    assert "endorsement key" not in created  # only what the attestation holds

    shown = succeeded(invoke("enrollment", "show", device, *target(dpsd_info))).stdout
    assert re.search(rf"^registration id +{device}$", shown, re.MULTILINE), shown
    assert primary.group(1) not in shown
    assert "primary key" not in shown
    with_keys = succeeded(
        invoke("enrollment", "show", device, "--show-keys", *target(dpsd_info))
    ).stdout
    assert re.search(rf"^primary key +{re.escape(primary.group(1))}$", with_keys, re.MULTILINE)

    updated = succeeded(
        invoke("enrollment", "update", device, "--device-id", "tab-device", *target(dpsd_info))
    ).stdout
    assert re.search(r"^device id +tab-device$", updated, re.MULTILINE), updated
    assert primary.group(1) not in updated
    updated_keys = succeeded(
        invoke("enrollment", "update", device, "--show-keys", *target(dpsd_info))
    ).stdout
    assert primary.group(1) in updated_keys

    listed = succeeded(invoke("enrollment", "list", *target(dpsd_info))).stdout
    header, rule, *rows = listed.splitlines()
    assert header.split() == [
        "registration", "id", "device", "id", "attestation", "status", "allocation",
        "registration", "updated",
    ]  # fmt: skip
    assert set(rule.replace(" ", "")) == {"-"}
    assert any(row.startswith(f"{device} ") for row in rows), listed
    assert primary.group(1) not in listed


def test_create_with_given_keys_and_settings(dpsd_info: dict[str, Any], tmp_path: Path) -> None:
    device = new_id("dev")
    primary, secondary = new_key(f"{device}/1"), new_key(f"{device}/2")
    twin = tmp_path / "twin.json"
    twin.write_text(json.dumps({"tags": {"site": "oslo"}}))
    created = dpsd_json(
        dpsd_info,
        "enrollment",
        "create",
        device,
        "--primary-key",
        primary,
        "--secondary-key",
        secondary,
        "--device-id",
        "pump-1",
        "--provisioning-status",
        "disabled",
        "--initial-twin",
        str(twin),
        "--reprovision-policy",
        "reprovisionandresetdata",
        "--edge-enabled",
    )
    assert created["attestation"] == {
        "type": "symmetricKey",
        "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
    }
    assert created["deviceId"] == "pump-1"
    assert created["provisioningStatus"] == "disabled"
    assert created["initialTwin"]["tags"] == {"site": "oslo"}
    assert created["reprovisionPolicy"] == {"updateHubAssignment": True, "migrateDeviceData": False}
    assert created["capabilities"] == {"iotEdge": True}


def test_a_tpm_device_enrolled_from_what_tpm_device_provision_printed(
    dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    device = SoftTpm.make(3)
    printed = tmp_path / "device.txt"
    printed.write_text(
        "Gathering the registration information...\r\n"
        f"\r\nRegistration Id:\r\n{device.registration_id()}\r\n"
        f"\r\nEndorsement Key:\r\n{device.ek_b64}\r\n\r\nPress any key to continue:\r\n"
    )
    created = dpsd_json(dpsd_info, "enrollment", "create", "--tpm-provision-output", str(printed))
    assert created["registrationId"] == device.registration_id()
    assert created["attestation"] == {"type": "tpm", "tpm": {"endorsementKey": device.ek_b64}}

    # An endorsement key alone: the id the SDKs derive from it.
    other = SoftTpm.make(4)
    derived = dpsd_json(dpsd_info, "enrollment", "create", "--endorsement-key", other.ek_b64)
    assert derived["registrationId"] == other.registration_id()
    line = error_line(invoke("enrollment", "create", *target(dpsd_info)), 2)
    assert "registration id" in line


def test_creating_twice_is_a_409(dpsd_info: dict[str, Any]) -> None:
    device = new_id("dev")
    dpsd_json(dpsd_info, "enrollment", "create", device)
    again = invoke("enrollment", "create", device, *target(dpsd_info))
    assert re.match(r"error: 409\d{3} ", error_line(again)), again.stderr


def test_iot_hubs_must_be_linked(dpsd_server: DpsdProcess, dpsd_info: dict[str, Any]) -> None:
    device = new_id("dev")
    hub = f"{new_id('hub')}.example.net"
    refused = invoke("enrollment", "create", device, "--iot-hubs", hub, *target(dpsd_info))
    line = error_line(refused)
    assert line.startswith("error: 400004 "), line
    assert hub in line

    linked = invoke("hub", "add", hub, "--data-dir", str(dpsd_server.data_dir))
    assert re.search(rf"^host name +{re.escape(hub)}$", succeeded(linked).stdout, re.MULTILINE)
    created = dpsd_json(
        dpsd_info,
        "enrollment",
        "create",
        device,
        "--iot-hubs",
        hub,
        "--allocation-policy",
        "static",
    )
    assert created["iotHubs"] == [hub]
    assert created["allocationPolicy"] == "static"


def test_update_changes_only_what_its_flags_name(dpsd_info: dict[str, Any], tmp_path: Path) -> None:
    device = new_id("dev")
    created = dpsd_json(dpsd_info, "enrollment", "create", device, "--device-id", "before")
    keys = dpsd_json(dpsd_info, "enrollment", "keys", device)
    twin = tmp_path / "twin.json"
    twin.write_text(json.dumps({"properties": {"desired": {"rate": 5}}}))

    updated = dpsd_json(
        dpsd_info,
        "enrollment",
        "update",
        device,
        "--provisioning-status",
        "disabled",
        "--initial-twin",
        str(twin),
    )
    assert updated["provisioningStatus"] == "disabled"
    assert updated["initialTwin"]["properties"]["desired"] == {"rate": 5}
    assert updated["etag"] != created["etag"]
    assert updated["createdDateTimeUtc"] == created["createdDateTimeUtc"]
    changed = ("provisioningStatus", "initialTwin", *SERVER_FIELDS)
    assert without(updated, *changed) == without(created, *changed)
    assert dpsd_json(dpsd_info, "enrollment", "keys", device) == keys

    new_primary = new_key(device)
    rekeyed = dpsd_json(
        dpsd_info, "enrollment", "update", device, "--primary-key", new_primary, "--etag", "*"
    )
    assert rekeyed["deviceId"] == "before"
    assert dpsd_json(dpsd_info, "enrollment", "keys", device)["symmetricKey"] == {
        "primaryKey": new_primary,
        "secondaryKey": keys["symmetricKey"]["secondaryKey"],
    }


def test_update_at_a_stale_etag_is_a_412(dpsd_info: dict[str, Any]) -> None:
    device = new_id("dev")
    created = dpsd_json(dpsd_info, "enrollment", "create", device)
    current = dpsd_json(dpsd_info, "enrollment", "update", device, "--device-id", "moved")

    stale_etag = ("--etag", created["etag"])
    stale = invoke(
        "enrollment", "update", device, "--device-id", "lost", *stale_etag, *target(dpsd_info)
    )
    line = error_line(stale)
    assert re.match(r"error: 412\d{3} ", line), line
    assert dpsd_json(dpsd_info, "enrollment", "show", device)["deviceId"] == "moved"

    at_current = dpsd_json(
        dpsd_info, "enrollment", "update", device, "--device-id", "kept", "--etag", current["etag"]
    )
    assert at_current["deviceId"] == "kept"


def test_list_with_a_query_and_top(dpsd_info: dict[str, Any]) -> None:
    tag = new_id("tagged")
    devices = sorted(new_id("listed") for _ in range(3))
    for device in devices:
        dpsd_json(dpsd_info, "enrollment", "create", device, "--device-id", tag)
    query = f"SELECT * FROM enrollments WHERE deviceId = '{tag}'"

    listed = dpsd_json(dpsd_info, "enrollment", "list", "--query", query)
    assert [record["registrationId"] for record in listed] == devices
    assert all("symmetricKey" not in record["attestation"] for record in listed)
    top = dpsd_json(dpsd_info, "enrollment", "list", "-q", query, "--top", "2")
    assert [record["registrationId"] for record in top] == devices[:2]

    table = succeeded(invoke("enrollment", "list", "-q", query, *target(dpsd_info))).stdout
    assert all(device in table for device in devices)
    assert "registration id" in table


def test_delete_then_show_is_a_404(dpsd_info: dict[str, Any]) -> None:
    device = new_id("dev")
    dpsd_json(dpsd_info, "enrollment", "create", device)
    deleted = succeeded(invoke("enrollment", "delete", device, *target(dpsd_info)))
    assert deleted.stderr.strip() == f"deleted {device}"

    missing = invoke("enrollment", "show", device, "-o", "json", *target(dpsd_info))
    line = error_line(missing)
    assert line.startswith("error: 404201 "), line
    assert device in line
    assert missing.stdout == ""
    again = invoke("enrollment", "delete", device, *target(dpsd_info))
    assert error_line(again).startswith("error: 404201 ")


def test_an_x509_enrollment_from_a_certificate_file(
    dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    device = new_id("x509")
    primary = certificate_file(tmp_path, device)
    created = dpsd_json(
        dpsd_info, "enrollment", "create", device, "--certificate-path", str(primary)
    )
    certificates = created["attestation"]["x509"]["clientCertificates"]
    assert certificates["primary"]["info"]["subjectName"] == f"CN={device}, O=Contoso, C=US"

    # an update naming only the secondary certificate keeps the primary
    secondary = certificate_file(tmp_path, f"{device}-next")
    dpsd_json(
        dpsd_info, "enrollment", "update", device, "--secondary-certificate-path", str(secondary)
    )
    mechanism = dpsd_json(dpsd_info, "enrollment", "keys", device)
    kept = mechanism["x509"]["clientCertificates"]
    assert kept["primary"] == certificates["primary"]
    assert kept["secondary"]["info"]["subjectName"] == f"CN={device}-next, O=Contoso, C=US"


# --- groups and device keys -----------------------------------------------------------------


def test_a_symmetric_key_group_and_its_device_keys(dpsd_info: dict[str, Any]) -> None:
    group = new_id("fleet")
    created = dpsd_json(
        dpsd_info, "group", "create", group, "--reprovision-policy", "never", "--no-edge-enabled"
    )
    assert created["enrollmentGroupId"] == group
    assert created["reprovisionPolicy"] == {
        "updateHubAssignment": False,
        "migrateDeviceData": False,
    }
    keys = dpsd_json(dpsd_info, "group", "keys", group)
    assert keys == created["attestation"]
    assert dpsd_json(dpsd_info, "group", "show", group)["attestation"] == {"type": "symmetricKey"}
    assert [g["enrollmentGroupId"] for g in dpsd_json(dpsd_info, "group", "list")].count(group) == 1

    primary, secondary = keys["symmetricKey"]["primaryKey"], keys["symmetricKey"]["secondaryKey"]
    device = new_id("sensor")
    derived = dpsd_json(dpsd_info, "device-key", "--group", group, "-r", device)
    assert derived == {"registrationId": device, "deviceKey": device_key(primary, device)}
    from_secondary = invoke(
        "device-key", "-g", group, "-r", device, "--secondary", *target(dpsd_info)
    )
    assert succeeded(from_secondary).stdout.strip() == device_key(secondary, device)

    offline = succeeded(invoke("device-key", "--key", primary, "--registration-id", device))
    assert offline.stdout.strip() == device_key(primary, device)


def test_device_key_needs_either_a_group_or_a_key() -> None:
    neither = invoke("device-key", "-r", "sensor-1")
    assert "give either --group" in error_line(neither, status=2)
    key = new_key("group")
    both = invoke("device-key", "-r", "sensor-1", "--group", "fleet", "--key", key)
    assert "give either --group" in error_line(both, status=2)
    not_base64 = invoke("device-key", "-r", "sensor-1", "--key", "not base64!")
    assert "not base64" in error_line(not_base64, status=2)


def test_device_key_of_a_group_without_symmetric_keys(
    dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    group = new_id("x509-fleet")
    root = certificate_file(tmp_path, group, ca=True)
    dpsd_json(dpsd_info, "group", "create", group, "--certificate-path", str(root))
    refused = invoke("device-key", "-g", group, "-r", "sensor-1", *target(dpsd_info))
    assert "does not attest with symmetric keys" in error_line(refused)
    unknown = invoke("device-key", "-g", new_id("nobody"), "-r", "sensor-1", *target(dpsd_info))
    assert error_line(unknown).startswith("error: 404")


def test_an_x509_group_from_a_signing_certificate(
    dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    group = new_id("x509-fleet")
    root = certificate_file(tmp_path, group, ca=True)
    created = dpsd_json(dpsd_info, "group", "create", group, "--certificate-path", str(root))
    assert created["attestation"]["type"] == "x509"
    keys = dpsd_json(dpsd_info, "group", "keys", group)
    assert set(keys["x509"]) == {"signingCertificates"}
    info = keys["x509"]["signingCertificates"]["primary"]["info"]
    assert info["subjectName"] == f"CN={group}, O=Contoso, C=US"
    table = succeeded(invoke("group", "keys", group, *target(dpsd_info))).stdout
    assert info["sha256Thumbprint"] in table


# --- registration states --------------------------------------------------------------------


def test_registration_show_of_an_unknown_device(dpsd_info: dict[str, Any]) -> None:
    device = new_id("nobody")
    line = error_line(invoke("registration", "show", device, *target(dpsd_info)))
    assert line.startswith("error: 404202 "), line
    assert device in line


def test_registration_list_of_a_group_without_devices(dpsd_info: dict[str, Any]) -> None:
    group = new_id("empty")
    dpsd_json(dpsd_info, "group", "create", group)
    assert dpsd_json(dpsd_info, "registration", "list", "-g", group) == []
    assert dpsd_json(dpsd_info, "registration", "list", "--group", group, "--top", "5") == []


# --- references to hubs and CA certificates --------------------------------------------------


def on_store(server: DpsdProcess, *args: str) -> Any:
    """``dpsd ARGS --data-dir`` of the module's server (a hub or certificate command)."""
    return invoke(*args, "--data-dir", str(server.data_dir))


def test_a_hub_records_name_is_unlinked_only_by_force(
    dpsd_server: DpsdProcess, dpsd_info: dict[str, Any]
) -> None:
    hub, device, group = f"{new_id('hub')}.example.net", new_id("dev"), new_id("group")
    succeeded(on_store(dpsd_server, "hub", "add", hub))
    dpsd_json(dpsd_info, "enrollment", "create", device, "--iot-hubs", hub)
    dpsd_json(dpsd_info, "group", "create", group, "--iot-hubs", hub.upper())

    refused = error_line(on_store(dpsd_server, "hub", "remove", hub))
    assert f"still named by 1 enrollment ({device}) and 1 enrollment group ({group})" in refused
    assert f"dpsd hub remove {hub} --force" in refused
    forced = succeeded(on_store(dpsd_server, "hub", "remove", hub, "--force"))
    assert forced.stdout == f"removed {hub}\n"
    assert forced.stderr.splitlines() == [
        f"warning: still naming it: 1 enrollment ({device}) and 1 enrollment group ({group}); "
        "their devices are assigned only to the other hubs they name, and fail to register if "
        "they name none"
    ]

    # What names the hub already can still be changed; nothing can name it anew.
    disable = ("--provisioning-status", "disabled")
    assert dpsd_json(dpsd_info, "enrollment", "update", device, *disable)["iotHubs"] == [hub]
    assert dpsd_json(dpsd_info, "group", "update", group, *disable)["iotHubs"] == [hub.upper()]
    other = invoke("enrollment", "create", new_id("dev"), "--iot-hubs", hub, *target(dpsd_info))
    assert hub in error_line(other)


def test_a_ca_certificate_groups_reference_is_deleted_only_by_force(
    dpsd_server: DpsdProcess, dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    ca, group = new_id("root"), new_id("line")
    pem = certificate_file(tmp_path, ca, ca=True)
    succeeded(on_store(dpsd_server, "certificate", "add", ca, "--file", str(pem), "--verified"))
    dpsd_json(dpsd_info, "group", "create", group, "--ca-name", ca)

    refused = error_line(on_store(dpsd_server, "certificate", "delete", ca))
    assert f"still referenced by 1 enrollment group ({group})" in refused
    forced = succeeded(on_store(dpsd_server, "certificate", "delete", ca, "--force"))
    assert forced.stdout == f"deleted {ca}\n"
    assert forced.stderr.splitlines() == [
        f"warning: still referencing it: 1 enrollment group ({group}); their devices fail "
        "attestation until they reference another CA certificate"
    ]

    disabled = dpsd_json(dpsd_info, "group", "update", group, "--provisioning-status", "disabled")
    assert disabled["provisioningStatus"] == "disabled"
    assert disabled["attestation"]["x509"]["caReferences"] == {"primary": ca}
    elsewhere = invoke("group", "update", group, "--ca-name", new_id("gone"), *target(dpsd_info))
    assert "not a CA certificate registered" in error_line(elsewhere)


# --- which dpsd -----------------------------------------------------------------------------


def test_by_default_the_dpsd_serving_the_data_dir(
    dpsd_server: DpsdProcess, dpsd_info: dict[str, Any]
) -> None:
    device = new_id("local")
    data_dir = str(dpsd_server.data_dir)
    created = output_json(
        invoke("enrollment", "create", device, "-o", "json", "--data-dir", data_dir)
    )
    assert created["registrationId"] == device
    # the same record, read through the connection string the server prints
    assert dpsd_json(dpsd_info, "enrollment", "show", device)["etag"] == created["etag"]
    listed = output_json(invoke("enrollment", "list", "-o", "json", "--data-dir", data_dir))
    assert device in [record["registrationId"] for record in listed]


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_command_on_the_local_dpsd_loads_no_server_store_or_rich(
    dpsd_server: DpsdProcess, output: str
) -> None:
    """The owner policy comes from the SQLite store through sqlite3, the table is plain
    text: what keeps a client command fast (bench/cli_start.py)."""
    device = new_id("lean")
    data_dir = {"DPSD_DATA_DIR": str(dpsd_server.data_dir)}
    created = run_dpsd_command("enrollment", "create", device, "-o", output, env=data_dir)
    assert created.exit_code == 0, created.stderr
    listed = run_dpsd_command("enrollment", "list", "-o", output, env=data_dir)
    assert listed.exit_code == 0, listed.stderr
    assert device in listed.stdout
    for run in (created, listed):
        assert "httpx" in run.modules
        assert run.loaded(NEVER_FOR_A_CLIENT_COMMAND) == []


def test_a_data_dir_no_dpsd_serves(tmp_path: Path) -> None:
    idle = tmp_path / "idle"
    result = invoke("enrollment", "list", "--data-dir", str(idle))
    line = error_line(result)
    assert "no dpsd is serving" in line
    assert "--connection-string" in line
    assert result.stdout == ""


def test_a_wrong_key_is_a_401(dpsd_info: dict[str, Any]) -> None:
    parts = dict(part.split("=", 1) for part in dpsd_info["serviceConnectionString"].split(";"))
    parts["SharedAccessKey"] = new_key("wrong")
    forged = ";".join(f"{name}={value}" for name, value in parts.items())
    ca_file = ("--ca-file", dpsd_info["caCertificatePath"])
    result = invoke("enrollment", "list", "--connection-string", forged, *ca_file)
    assert error_line(result).startswith("error: 401")


def test_through_the_entry_point_with_the_environment(dpsd_info: dict[str, Any]) -> None:
    env = {
        **dpsd_env(),
        "DPSD_CONNECTION_STRING": dpsd_info["serviceConnectionString"],
        "DPSD_CA_FILE": dpsd_info["caCertificatePath"],
    }

    def dpsd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DPSD, *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    device = new_id("env")
    created = dpsd("enrollment", "create", device, "--output", "json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["registrationId"] == device

    deleted = dpsd("enrollment", "delete", device)
    assert deleted.returncode == 0, deleted.stderr
    missing = dpsd("enrollment", "show", device)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1, missing.stderr
    assert missing.stderr.startswith("error: 404201 "), missing.stderr


def test_import_shows_progress_on_a_terminal(dpsd_info: dict[str, Any], tmp_path: Path) -> None:
    """FORCE_COLOR makes rich treat stderr as a terminal, as an operator's would be."""
    fleet = tmp_path / "fleet.jsonl"
    prefix = new_id("progress")
    fleet.write_text(
        "".join(
            json.dumps(
                {
                    "kind": "enrollment",
                    "record": {
                        "registrationId": f"{prefix}-{n}",
                        "attestation": {"type": "symmetricKey"},
                    },
                }
            )
            + "\n"
            for n in range(12)
        )
    )
    env = {
        **dpsd_env(),
        "DPSD_CONNECTION_STRING": dpsd_info["serviceConnectionString"],
        "DPSD_CA_FILE": dpsd_info["caCertificatePath"],
        "FORCE_COLOR": "1",
        "COLUMNS": "120",
    }
    result = subprocess.run(
        [*DPSD, "import", str(fleet)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    bar = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", result.stderr)
    assert "importing" in bar
    assert "12/12" in bar  # done of total
    assert re.search(r"[\d,]+/s", bar), bar  # the rate
    assert "12 created" in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", result.stdout)
