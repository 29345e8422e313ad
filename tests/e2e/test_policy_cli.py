"""``dpsd policy list|show``: the service API's shared access policies, their rights, and
with --show-keys connection strings that a client signs with (used here for real)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from tests.e2e.cli_runner import error_line, invoke, output_json, succeeded
from tests.e2e.process import DpsdProcess

pytestmark = pytest.mark.e2e

POLICIES = [
    "enrollmentread",
    "enrollmentwrite",
    "provisioningserviceowner",
    "registrationstatusread",
    "registrationstatuswrite",
]


def policy(server: DpsdProcess, *args: str) -> Any:
    return invoke("policy", *args, "--data-dir", str(server.data_dir))


def test_list_names_the_policies_and_their_rights_without_keys(dpsd_server: DpsdProcess) -> None:
    table = succeeded(policy(dpsd_server, "list")).stdout
    header, _rule, *rows = table.splitlines()
    assert header.split() == ["name", "rights"]
    assert [row.split()[0] for row in rows] == POLICIES
    assert re.search(r"^enrollmentwrite +EnrollmentRead, EnrollmentWrite$", table, re.M), table
    listed = output_json(policy(dpsd_server, "list", "-o", "json"))
    assert [entry["keyName"] for entry in listed] == POLICIES
    assert all(set(entry) == {"keyName", "rights"} for entry in listed)
    assert "SharedAccessKey" not in table


def test_show_keys_gives_the_connection_strings_of_the_running_server(
    dpsd_server: DpsdProcess, dpsd_info: dict[str, Any]
) -> None:
    owner = output_json(
        policy(dpsd_server, "show", "provisioningserviceowner", "--show-keys", "-o", "json")
    )
    assert owner["connectionString"] == dpsd_info["serviceConnectionString"]
    assert owner["secondaryConnectionString"].endswith(f"SharedAccessKey={owner['secondaryKey']}")
    listed = output_json(policy(dpsd_server, "list", "--show-keys", "-o", "json"))
    assert owner in listed
    plain = succeeded(policy(dpsd_server, "show", "enrollmentread")).stdout
    assert re.search(r"^rights +EnrollmentRead$", plain, re.M), plain
    assert "key" not in plain.replace("keyName", "")


def test_a_read_only_policy_reads_and_is_refused_writes(
    dpsd_server: DpsdProcess, dpsd_info: dict[str, Any]
) -> None:
    reader = output_json(policy(dpsd_server, "show", "EnrollmentRead", "--show-keys", "-o", "json"))
    table = succeeded(policy(dpsd_server, "show", "enrollmentread", "--show-keys")).stdout
    assert re.search(rf"^connection string +{re.escape(reader['connectionString'])}$", table, re.M)
    as_reader = ("--connection-string", reader["connectionString"])
    as_reader += ("--ca-file", dpsd_info["caCertificatePath"])
    listed = json.loads(succeeded(invoke("enrollment", "list", "-o", "json", *as_reader)).stdout)
    assert isinstance(listed, list)
    refused = invoke("enrollment", "create", f"ro-{uuid.uuid4().hex[:8]}", *as_reader)
    assert error_line(refused).startswith("error: 401")


def test_an_unknown_policy_is_one_line(dpsd_server: DpsdProcess) -> None:
    line = error_line(policy(dpsd_server, "show", "nobody"))
    assert line == "error: there is no shared access policy 'nobody' (dpsd policy list names them)"
