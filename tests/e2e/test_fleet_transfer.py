"""``dpsd export`` and ``dpsd import`` between real ``dpsd serve`` processes: a mixed fleet
exported from one dpsd arrives the same in another; re-runs skip, ``--dry-run`` writes
nothing, ``--update-existing`` writes over; bad lines and unreachable or refusing targets
fail plainly, and a failed export leaves no file."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from dpsd.cli.transfer import ALREADY_THERE, CERTIFICATES_NOT_IN_FILE, lacks_certificates
from dpsd.client import DpsServiceClient, EnrollmentOperations, NotFoundError
from tests.certs import issue
from tests.e2e.cli_runner import error_line, invoke, output_json, succeeded, target
from tests.e2e.process import DpsdProcess
from tests.e2e.test_client_sync import register

pytestmark = pytest.mark.e2e

Record = dict[str, Any]
Launch = Callable[[Path], DpsdProcess]
SERVER_FIELDS = ("etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "registrationState")
REGISTRATIONS_SKIPPED = "registration states cannot be written through the service API"


def new_key(seed: str) -> str:
    return base64.b64encode(hashlib.sha512(seed.encode()).digest()).decode()


def client_of(info: dict[str, Any]) -> DpsServiceClient:
    return DpsServiceClient.from_connection_string(
        info["serviceConnectionString"], verify=info["caCertificatePath"]
    )


def cli_json(info: dict[str, Any], *args: str) -> Any:
    return output_json(invoke(*args, "-o", "json", *target(info)))


@dataclass(frozen=True)
class Fleet:
    """What the source dpsd holds and the file it was exported to."""

    file: Path
    enrollments: list[str]
    groups: list[str]
    registrations: list[str]
    x509: str
    x509_flags: tuple[str, ...]
    export: Result

    @property
    def records(self) -> int:
        return len(self.enrollments) + len(self.groups)

    def lacking_certificates(self) -> list[str]:
        """The records the file holds with only the info of their X.509 certificates: none,
        since dpsd's query extension gives the certificates (from Azure DPS, whose service
        API gives only their info, these could not be created by an import)."""
        lines = [json.loads(line) for line in self.file.read_text().splitlines()]
        lacking = [
            line["record"].get("registrationId") or line["record"]["enrollmentGroupId"]
            for line in lines
            if line["kind"] != "registration" and lacks_certificates(line["record"])
        ]
        assert lacking == [], lacking
        return lacking


def populate(info: dict[str, Any], folder: Path) -> Fleet:
    """25 records of every sort, and two registration states of group devices."""
    tag = uuid.uuid4().hex[:8]
    given = [f"given-{tag}-{n:02}" for n in range(8)]
    generated = [f"generated-{tag}-{n:02}" for n in range(12)]
    with client_of(info) as client:
        records: list[Record] = [
            {
                "registrationId": registration_id,
                "deviceId": f"device-{registration_id}",
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {
                        "primaryKey": new_key(f"{registration_id}/1"),
                        "secondaryKey": new_key(f"{registration_id}/2"),
                    },
                },
            }
            for registration_id in given
        ]
        records += [
            {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}}
            for registration_id in generated
        ]
        for start in range(0, len(records), 10):
            result = client.enrollments.run_bulk_operation("create", records[start : start + 10])
            assert result["isSuccessful"], result

    x509 = f"camera-{tag}"
    certificate = folder / "camera.pem"
    certificate.write_text(issue(x509).pem)
    x509_flags = ("--certificate-path", str(certificate), "--device-id", "camera-7")
    cli_json(info, "enrollment", "create", x509, *x509_flags)

    tpm = f"tpm-{tag}"
    cli_json(info, "enrollment", "create", tpm, "--endorsement-key", new_key(tpm))

    twin = folder / "twin.json"
    twin.write_text(json.dumps({"tags": {"site": "oslo"}, "properties": {"desired": {"rate": 5}}}))
    settings = ("--provisioning-status", "disabled", "--initial-twin", str(twin))
    disabled = f"disabled-{tag}"
    edge = ("--edge-enabled", "--device-id", "pump-1")
    cli_json(
        info, "enrollment", "create", disabled, *settings, "--reprovision-policy", "never", *edge
    )

    group = f"sensors-{tag}"
    group_key = cli_json(info, "group", "create", group)["attestation"]["symmetricKey"]
    devices = sorted(f"sensor-{tag}-{n}" for n in range(2))
    for device in devices:
        register(info, device, group_key["primaryKey"])
    quiet = f"quiet-{tag}"
    cli_json(
        info, "group", "create", quiet, *settings, "--reprovision-policy", "reprovisionandresetdata"
    )

    file = folder / "fleet.jsonl"
    export = invoke("export", str(file), "--registrations", *target(info))
    return Fleet(
        file=file,
        enrollments=sorted([*given, *generated, x509, tpm, disabled]),
        groups=sorted([group, quiet]),
        registrations=devices,
        x509=x509,
        x509_flags=x509_flags,
        export=export,
    )


@pytest.fixture(scope="module")
def fleet(dpsd_info: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return populate(dpsd_info, tmp_path_factory.mktemp("fleet"))


def run_import(info: dict[str, Any], file: Path, *flags: str) -> tuple[Result, Record]:
    """``dpsd import FILE -o json``: its result and the summary it printed."""
    result = invoke("import", str(file), "-o", "json", *flags, *target(info))
    summary: Record = json.loads(result.stdout)
    return result, summary


def counts(summary: Record) -> dict[str, int]:
    return {name: summary[name] for name in ("created", "updated", "skipped", "failed")}


def reasons(summary: Record) -> dict[tuple[str, str], list[str]]:
    return {(r["outcome"], r["reason"]): r["examples"] for r in summary["reasons"]}


def registrations_reason(summary: Record) -> list[str]:
    found = [r for r in summary["reasons"] if r["reason"].startswith(REGISTRATIONS_SKIPPED)]
    assert len(found) == 1, summary
    assert found[0]["outcome"] == "skipped"
    examples: list[str] = found[0]["examples"]
    return examples


def snapshot(info: dict[str, Any], fleet: Fleet, *, etags: bool = False) -> dict[str, Any]:
    """Every record of the fleet as GET and attestationmechanism return it, without what
    each service sets for itself."""
    dropped = SERVER_FIELDS if not etags else ("registrationState",)

    def read(operations: EnrollmentOperations, ids: list[str]) -> dict[str, Any]:
        return {
            record_id: (
                {k: v for k, v in operations.get(record_id).items() if k not in dropped},
                operations.attestation_mechanism(record_id),
            )
            for record_id in ids
        }

    with client_of(info) as client:
        return {
            "enrollments": read(client.enrollments, fleet.enrollments),
            "groups": read(client.enrollment_groups, fleet.groups),
        }


def held_ids(info: dict[str, Any]) -> tuple[list[str], list[str]]:
    with client_of(info) as client:
        enrollments = sorted(r["registrationId"] for r in client.enrollments.query())
        groups = sorted(r["enrollmentGroupId"] for r in client.enrollment_groups.query())
    return enrollments, groups


# --- export ---------------------------------------------------------------------------------


def test_export_writes_every_record_with_its_keys(fleet: Fleet) -> None:
    succeeded(fleet.export)
    assert fleet.export.stderr.strip() == (
        f"exported {len(fleet.enrollments)} enrollments, {len(fleet.groups)} groups,"
        f" {len(fleet.registrations)} registration states"
    )
    assert not fleet.file.with_name("fleet.jsonl.partial").exists()
    assert sorted(path.name for path in fleet.file.parent.glob("fleet.jsonl*")) == ["fleet.jsonl"]

    lines = [json.loads(line) for line in fleet.file.read_text().splitlines()]
    assert Counter(line["kind"] for line in lines) == {
        "enrollment": 23,
        "enrollmentGroup": 2,
        "registration": 2,
    }
    assert fleet.records == 25
    by_kind: dict[str, list[Record]] = {}
    for line in lines:
        by_kind.setdefault(line["kind"], []).append(line["record"])
    assert sorted(r["registrationId"] for r in by_kind["enrollment"]) == fleet.enrollments
    assert sorted(r["enrollmentGroupId"] for r in by_kind["enrollmentGroup"]) == fleet.groups
    assert sorted(r["registrationId"] for r in by_kind["registration"]) == fleet.registrations
    for record in [*by_kind["enrollment"], *by_kind["enrollmentGroup"]]:
        attestation = record["attestation"]
        if attestation["type"] == "symmetricKey":
            assert set(attestation["symmetricKey"]) == {"primaryKey", "secondaryKey"}, record
    kinds = [line["kind"] for line in lines]
    assert kinds == sorted(kinds, key=["enrollmentGroup", "enrollment", "registration"].index)


def test_export_to_stdout(fleet: Fleet, dpsd_info: dict[str, Any]) -> None:
    exported = succeeded(invoke("export", "-", *target(dpsd_info)))
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    ids = {
        line["record"].get("registrationId") or line["record"]["enrollmentGroupId"]
        for line in lines
    }
    assert {*fleet.enrollments, *fleet.groups} <= ids
    assert "registration" not in {line["kind"] for line in lines}


def test_a_refused_export_leaves_no_file(dpsd_info: dict[str, Any], tmp_path: Path) -> None:
    parts = dict(part.split("=", 1) for part in dpsd_info["serviceConnectionString"].split(";"))
    parts["SharedAccessKey"] = new_key("wrong")
    forged = ";".join(f"{name}={value}" for name, value in parts.items())
    file = tmp_path / "fleet.jsonl"
    ca_file = ("--ca-file", dpsd_info["caCertificatePath"])
    result = invoke("export", str(file), "--connection-string", forged, *ca_file)
    assert error_line(result).startswith("error: 401")
    assert list(tmp_path.iterdir()) == []


# --- import ---------------------------------------------------------------------------------


def test_import_recreates_the_fleet_and_a_rerun_skips_it(
    fleet: Fleet, dpsd_info: dict[str, Any], launch_dpsd: Launch, tmp_path: Path
) -> None:
    second = launch_dpsd(tmp_path / "second").info
    # A record whose certificate the file lacks is created on the target with its
    # certificate file first, as the import's reason for failing it says; then it is held.
    lacking = fleet.lacking_certificates()
    for _ in lacking:
        cli_json(second, "enrollment", "create", fleet.x509, *fleet.x509_flags)

    first, summary = run_import(second, fleet.file)
    succeeded(first)
    assert summary["dryRun"] is False
    assert counts(summary) == {
        "created": 25 - len(lacking),
        "updated": 0,
        "skipped": 2 + len(lacking),
        "failed": 0,
    }
    assert registrations_reason(summary) == fleet.registrations
    assert [r["outcome"] for r in summary["reasons"]] == ["skipped"]
    assert held_ids(second) == (fleet.enrollments, fleet.groups)
    assert snapshot(second, fleet) == snapshot(dpsd_info, fleet)

    rerun, summary = run_import(second, fleet.file)
    succeeded(rerun)
    assert counts(summary) == {"created": 0, "updated": 0, "skipped": 27, "failed": 0}
    assert [r["outcome"] for r in summary["reasons"]] == ["skipped"]
    assert held_ids(second) == (fleet.enrollments, fleet.groups)

    updated, summary = run_import(second, fleet.file, "--update-existing")
    succeeded(updated)
    assert counts(summary) == {"created": 0, "updated": 25, "skipped": 2, "failed": 0}
    assert snapshot(second, fleet) == snapshot(dpsd_info, fleet)


def test_a_dry_run_writes_nothing(
    fleet: Fleet, dpsd_info: dict[str, Any], launch_dpsd: Launch, tmp_path: Path
) -> None:
    third = launch_dpsd(tmp_path / "third").info
    lacking = fleet.lacking_certificates()
    result, summary = run_import(third, fleet.file, "--dry-run")
    assert summary["dryRun"] is True
    assert counts(summary) == {
        "created": 25 - len(lacking),
        "updated": 0,
        "skipped": 2,
        "failed": len(lacking),
    }
    if lacking:  # what the import would do with them
        assert reasons(summary)["failed", CERTIFICATES_NOT_IN_FILE] == lacking
        assert error_line(result) == "error: 1 record would fail (reasons above)"
    else:
        succeeded(result)
    assert held_ids(third) == ([], [])

    # against the source itself, everything is held: it would all be updated, and is not
    before = snapshot(dpsd_info, fleet, etags=True)
    planned, summary = run_import(dpsd_info, fleet.file, "--dry-run", "--update-existing")
    succeeded(planned)
    assert counts(summary) == {"created": 0, "updated": 25, "skipped": 2, "failed": 0}
    assert snapshot(dpsd_info, fleet, etags=True) == before

    table = succeeded(invoke("import", str(fleet.file), "--dry-run", *target(dpsd_info))).stdout
    assert "dry run, nothing written" in table
    assert "0 created, 0 updated, 27 skipped, 0 failed" in table


def test_records_without_their_certificates(
    fleet: Fleet, dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    """An X.509 record as the service API returns it (certificates as their info only)
    fails plainly where the target does not hold it, and counts as held where it does."""
    with client_of(dpsd_info) as client:
        held = {
            k: v for k, v in client.enrollments.get(fleet.x509).items() if k not in SERVER_FIELDS
        }
        mechanism = client.enrollments.attestation_mechanism(fleet.x509)
    held["attestation"] = mechanism
    assert lacks_certificates(held)
    unknown = {**held, "registrationId": f"unknown-{uuid.uuid4().hex[:8]}"}
    file = tmp_path / "fleet.jsonl"
    file.write_text(
        "".join(json.dumps({"kind": "enrollment", "record": r}) + "\n" for r in (held, unknown))
    )

    for flags, outcome in (
        ((), "skipped"),
        (("--dry-run",), "skipped"),
        (("--update-existing",), "updated"),
    ):
        result, summary = run_import(dpsd_info, file, *flags)
        fails = "would fail" if "--dry-run" in flags else "failed"
        assert error_line(result) == f"error: 1 record {fails} (reasons above)", flags
        assert summary[outcome] == 1, (flags, summary)
        assert summary["created"] == 0
        failed = {key: ids for key, ids in reasons(summary).items() if key[0] == "failed"}
        assert failed == {("failed", CERTIFICATES_NOT_IN_FILE): [unknown["registrationId"]]}
    with client_of(dpsd_info) as client:
        assert client.enrollments.attestation_mechanism(fleet.x509) == mechanism
        with pytest.raises(NotFoundError):
            client.enrollments.get(unknown["registrationId"])


def test_bad_lines_fail_with_their_numbers_and_the_rest_is_imported(
    dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    keys = {"primaryKey": new_key(f"{tag}/1"), "secondaryKey": new_key(f"{tag}/2")}
    good_enrollments = [f"late-{tag}-{n}" for n in range(2)]
    good_group = f"late-group-{tag}"

    def fleet_line(kind: str, record: Record) -> str:
        return json.dumps({"kind": kind, "record": record})

    def enrollment(registration_id: str) -> str:
        attestation = {"type": "symmetricKey", "symmetricKey": keys}
        return fleet_line(
            "enrollment", {"registrationId": registration_id, "attestation": attestation}
        )

    file = tmp_path / "damaged.jsonl"
    lines = [
        enrollment(good_enrollments[0]),
        "this is not JSON",
        fleet_line("device", {"registrationId": f"odd-{tag}"}),
        fleet_line(
            "enrollmentGroup",
            {"enrollmentGroupId": good_group, "attestation": {"type": "symmetricKey"}},
        ),
        "",
        fleet_line("enrollment", {"deviceId": "nameless"}),
        enrollment(good_enrollments[1]),
    ]
    file.write_text("\n".join(lines) + "\n")

    result, summary = run_import(dpsd_info, file)
    assert error_line(result) == "error: 3 records failed (reasons above)"
    assert counts(summary) == {"created": 3, "updated": 0, "skipped": 0, "failed": 3}
    found = {tuple(r["examples"]): (r["outcome"], r["reason"]) for r in summary["reasons"]}
    assert found.keys() == {("line 2",), ("line 3",), ("line 6",)}
    assert found["line 2",][1].startswith("not JSON")
    assert found["line 3",] == ("failed", "unknown kind 'device'")
    assert found["line 6",] == ("failed", "the record has no registrationId")

    with client_of(dpsd_info) as client:
        for registration_id in good_enrollments:
            mechanism = client.enrollments.attestation_mechanism(registration_id)
            assert mechanism["symmetricKey"] == keys
        assert client.enrollment_groups.get(good_group)["enrollmentGroupId"] == good_group


def test_a_record_the_service_cannot_read_fails_alone(
    dpsd_info: dict[str, Any], tmp_path: Path
) -> None:
    """The service refuses a whole bulk request over one malformed record: the batch goes
    again a record at a time, so its other records are still imported."""
    tag = uuid.uuid4().hex[:8]
    good = [f"batched-{tag}-{n}" for n in range(4)]
    malformed = f"malformed-{tag}"
    records: list[Record] = [
        {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}}
        for registration_id in good
    ]
    records.insert(2, {"registrationId": malformed, "attestation": "symmetricKey"})
    file = tmp_path / "fleet.jsonl"
    file.write_text(
        "".join(json.dumps({"kind": "enrollment", "record": r}) + "\n" for r in records)
    )

    result, summary = run_import(dpsd_info, file)
    assert error_line(result) == "error: 1 record failed (reasons above)"
    assert counts(summary) == {"created": 4, "updated": 0, "skipped": 0, "failed": 1}
    [(outcome, reason, examples)] = [
        (r["outcome"], r["reason"], r["examples"]) for r in summary["reasons"]
    ]
    assert (outcome, examples) == ("failed", [malformed])
    assert reason.startswith("400"), reason
    assert "attestation" in reason
    with client_of(dpsd_info) as client:
        for registration_id in good:
            assert client.enrollments.get(registration_id)["registrationId"] == registration_id
        with pytest.raises(NotFoundError):
            client.enrollments.get(malformed)


def test_an_export_to_a_path_it_cannot_write(dpsd_info: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "fleet.jsonl"
    line = error_line(invoke("export", str(missing), *target(dpsd_info)))
    assert line.startswith("error: cannot write "), line
    assert "No such file or directory" in line
    folder = tmp_path / "folder"
    folder.mkdir()
    line = error_line(invoke("export", str(folder), *target(dpsd_info)))
    assert line.startswith(f"error: cannot write {folder}"), line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder"]
    assert list(folder.iterdir()) == []


# --- unreachable ----------------------------------------------------------------------------


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_target(fleet: Fleet, dpsd_info: dict[str, Any], tmp_path: Path) -> None:
    nowhere = (
        f"HostName=127.0.0.1:{closed_port()};SharedAccessKeyName=provisioningserviceowner;"
        f"SharedAccessKey={new_key('any')}"
    )
    options = ("--connection-string", nowhere, "--ca-file", dpsd_info["caCertificatePath"])

    imported = invoke("import", str(fleet.file), "-o", "json", *options)
    assert error_line(imported).startswith("error: cannot reach the service")
    summary = json.loads(imported.stdout)  # what was done before the failure
    assert (summary["created"], summary["updated"], summary["failed"]) == (0, 0, 0)

    file = tmp_path / "nowhere.jsonl"
    exported = invoke("export", str(file), *options)
    assert error_line(exported).startswith("error: cannot reach the service")
    assert list(tmp_path.iterdir()) == []


def test_a_dry_run_predicts_what_the_import_does_record_by_record(
    dpsd_info: dict[str, Any], launch_dpsd: Launch, tmp_path: Path
) -> None:
    """Records the service refuses for what they hold (keys that are no base64, an id it
    does not take, X.509 with both certificate kinds, a group with a CA reference and a
    signing certificate, a field of the wrong type) beside good ones and one the target
    holds: the dry run names each refusal with the code and message the import then meets,
    and its counts are the import's."""
    target_info = launch_dpsd(tmp_path / "target").info
    tag = uuid.uuid4().hex[:8]
    keys = {"primaryKey": new_key(f"{tag}/1"), "secondaryKey": new_key(f"{tag}/2")}
    signer = issue(f"signer-{tag}", ca=True).pem

    def symmetric(registration_id: str, **more: Any) -> Record:
        attestation = {"type": "symmetricKey", "symmetricKey": keys}
        return {"registrationId": registration_id, "attestation": attestation, **more}

    held = symmetric(f"held-{tag}")
    key_flags = ("--primary-key", keys["primaryKey"], "--secondary-key", keys["secondaryKey"])
    cli_json(target_info, "enrollment", "create", held["registrationId"], *key_flags)
    certificate = {"primary": {"certificate": signer}}
    not_base64 = {"type": "symmetricKey", "symmetricKey": {"primaryKey": "not base64!"}}
    both_kinds = {"clientCertificates": certificate, "signingCertificates": certificate}
    reference_and_signer = {
        "caReferences": {"primary": "some-ca"},
        "signingCertificates": certificate,
    }
    records = [
        ("enrollment", symmetric(f"good-{tag}")),
        ("enrollment", held),
        ("enrollment", symmetric(f"badkey-{tag}") | {"attestation": not_base64}),
        ("enrollment", symmetric(f"bad id {tag}")),
        ("enrollment", symmetric(f"typed-{tag}", provisioningStatus=7)),
        (
            "enrollment",
            symmetric(f"both-{tag}") | {"attestation": {"type": "x509", "x509": both_kinds}},
        ),
        (
            "enrollmentGroup",
            {
                "enrollmentGroupId": f"mixed-{tag}",
                "attestation": {"type": "x509", "x509": reference_and_signer},
            },
        ),
        (
            "enrollmentGroup",
            {
                "enrollmentGroupId": f"group-{tag}",
                "attestation": {"type": "symmetricKey", "symmetricKey": keys},
            },
        ),
    ]
    file = tmp_path / "fleet.jsonl"
    file.write_text("".join(json.dumps({"kind": k, "record": r}) + "\n" for k, r in records))

    planned, plan = run_import(target_info, file, "--dry-run")
    assert error_line(planned) == "error: 5 records would fail (reasons above)"
    assert counts(plan) == {"created": 2, "updated": 0, "skipped": 1, "failed": 5}
    assert held_ids(target_info) == ([held["registrationId"]], [])  # nothing written
    predicted = {key: ids for key, ids in reasons(plan).items() if key[0] == "failed"}
    assert sorted(ids[0] for ids in predicted.values()) == sorted(
        [f"badkey-{tag}", f"bad id {tag}", f"typed-{tag}", f"both-{tag}", f"mixed-{tag}"]
    )
    assert all(re.fullmatch(r"4\d\d\d\d\d \S.*", reason) for _, reason in predicted), predicted
    assert reasons(plan)["skipped", ALREADY_THERE] == [held["registrationId"]]

    imported, done = run_import(target_info, file)
    assert error_line(imported) == "error: 5 records failed (reasons above)"
    assert counts(done) == counts(plan)
    assert {key: ids for key, ids in reasons(done).items() if key[0] == "failed"} == predicted

    human = invoke("import", str(file), "--dry-run", *target(target_info))
    assert error_line(human) == "error: 5 records would fail (reasons above)"
    assert "0 created, 0 updated, 3 skipped, 5 failed" in human.stdout
    for _, reason in predicted:
        assert reason in human.stdout
