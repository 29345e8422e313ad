"""The official Node service SDK (azure-iot-provisioning-service, pinned in tests/node) against a
real dpsd over HTTPS on port 443 of a private loopback address, trusting the dpsd CA through
NODE_EXTRA_CA_CERTS.

The SDK only connects to port 443, so the server listens on 127.0.0.77:443 (never 127.0.0.1:443,
which something else on the machine may own). tests/node/scenarios.js runs every scenario once
and prints one JSON line each; the tests here assert on those observations.

Skipped, with the reason, when ``node`` or tests/node/node_modules is missing or port 443 cannot
be bound (not root); when ``CI`` is set, each of those fails instead.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.node_clients import node_env, run_node_script
from tests.e2e.process import DpsdProcess, bind_problem, skip_or_fail, start_dpsd_listening

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCENARIOS_SCRIPT = NODE_DIR / "scenarios.js"
SDK_PACKAGE = NODE_DIR / "node_modules" / "azure-iot-provisioning-service"
ADDRESS = "127.0.0.77"
PORT = 443
NODE_TIMEOUT = 60.0  # the whole script; each scenario is bounded in the script too
SCENARIO_TIMEOUT_MS = 10_000

Result = dict[str, Any]


def port_443_problem() -> str | None:
    """Why ADDRESS:443 cannot be bound here, or None when it can."""
    return bind_problem(ADDRESS, PORT)


def require_node_environment() -> str:
    """The path of ``node``, after checking everything the Node run needs."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not on PATH")
    if not SDK_PACKAGE.is_dir():
        skip_or_fail(
            f"{SDK_PACKAGE.relative_to(NODE_DIR.parent.parent)} is missing: "
            "run scripts/install (npm ci --prefix tests/node)"
        )
    problem = port_443_problem()
    if problem is not None:
        skip_or_fail(problem)
    return node


@pytest.fixture(scope="module")
def node_binary() -> str:
    return require_node_environment()


@pytest.fixture(scope="module")
def dpsd_on_443(
    node_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DpsdProcess]:
    """dpsd on ADDRESS:443, HTTPS only, with a certificate for ADDRESS; stopped cleanly."""
    base = tmp_path_factory.mktemp("dpsd-node")
    listen = ["--host", ADDRESS, "--hostname", ADDRESS, "--https-port", str(PORT)]
    # info gets no flags: it must report the running server's host and port by itself.
    server = start_dpsd_listening(base / "data", base / "serve.log", serve_args=listen)
    assert server.info["serviceConnectionString"].startswith(f"HostName={ADDRESS};")
    yield server
    server.stop_cleanly(signal.SIGTERM)


@pytest.fixture(scope="module")
def scenarios(node_binary: str, dpsd_on_443: DpsdProcess) -> dict[str, Result]:
    """Every scenario's JSON line from one run of tests/node/scenarios.js, by name."""
    info = dpsd_on_443.info
    env = node_env(
        dpsd_on_443,
        DPS_SERVICE_CONNECTION_STRING=info["serviceConnectionString"],
        DPS_SCENARIO_TIMEOUT_MS=str(SCENARIO_TIMEOUT_MS),
    )
    run = run_node_script(node_binary, dpsd_on_443, SCENARIOS_SCRIPT.name, env, NODE_TIMEOUT)
    return run.by_scenario()


def scenario(results: Mapping[str, Result], name: str) -> Result:
    """The observations of scenario ``name``, failing with its error when it threw."""
    assert name in results, f"scenario {name} did not run: {sorted(results)}"
    line = results[name]
    assert line["ok"], f"scenario {name} threw:\n{json.dumps(line, indent=2)}"
    result: Result = line["result"]
    return result


# --- assertions on what the SDK surfaced ------------------------------------------------------


def assert_json_response(response: Mapping[str, Any], status: int = 200) -> None:
    assert response["statusCode"] == status, response
    # The SDK parses a body only when the content-type names application/json.
    assert "application/json" in (response["contentType"] or ""), response


def assert_sdk_error(failure: Mapping[str, Any], status: int, error_class: str) -> None:
    """A call that failed with ``status``, surfaced by the SDK as ``error_class``, with a DPS
    error body whose errorCode is the status followed by three digits."""
    assert failure["failed"] is True, f"expected {status}, the call succeeded: {failure}"
    assert failure["statusCode"] == status, failure
    assert failure["name"] == error_class, failure
    body = failure["responseBody"]
    assert isinstance(body, dict), failure
    assert type(body["errorCode"]) is int, body
    assert body["errorCode"] // 1000 == status, body
    assert body["message"], body
    assert "application/json" in (failure["contentType"] or ""), failure


def assert_not_found(failure: Mapping[str, Any]) -> None:
    # azure-iot-http-base turns a 404 that is not DeviceNotFound/IotHubNotFound into a plain
    # Error('Not found'); the DPS body is still on error.responseBody.
    assert_sdk_error(failure, 404, "Error")
    assert failure["message"] == "Not found", failure


def assert_bulk_error_code(error: Mapping[str, Any], status: int) -> None:
    assert type(error["errorCode"]) is int, error
    assert error["errorCode"] // 1000 == status, error
    assert error["errorStatus"], error


def assert_succeeded(outcome: Mapping[str, Any]) -> None:
    assert outcome["failed"] is False, f"expected success, got {outcome}"


def assert_generated_keys(keys: Mapping[str, Any] | None) -> None:
    assert keys is not None
    primary, secondary = keys["primaryKey"], keys["secondaryKey"]
    assert len(base64.b64decode(primary, validate=True)) >= 16, keys
    assert len(base64.b64decode(secondary, validate=True)) >= 16, keys
    assert primary != secondary


def assert_no_keys(record: Mapping[str, Any], keys: Mapping[str, Any]) -> None:
    attestation = record["attestation"]
    assert attestation["type"] == "symmetricKey", attestation
    assert not attestation.get("symmetricKey"), attestation
    text = json.dumps(record)
    assert keys["primaryKey"] not in text
    assert keys["secondaryKey"] not in text


def assert_pages_every_record_once(result: Mapping[str, Any]) -> None:
    """The scenario ran first on a fresh server, so the query sees exactly what it created."""
    pages = result["pages"]
    page_size = result["pageSize"]
    created = result["created"]
    for page in pages:
        assert_json_response(page)
        assert page["isArray"], page
        assert 0 < len(page["ids"]) <= page_size, page
        assert page["keys"] == [None] * len(page["ids"]), "query results must hide the keys"
    # x-ms-continuation on every page but the last: the SDK stops when the header is absent.
    assert all(page["continuation"] for page in pages[:-1]), pages
    assert pages[-1]["continuation"] is None, pages[-1]
    seen = [registration_id for page in pages for registration_id in page["ids"]]
    assert len(seen) == len(set(seen)), f"returned more than once: {seen}"
    assert sorted(seen) == sorted(created), (seen, created)
    assert len(pages) == math.ceil(len(created) / page_size), [page["ids"] for page in pages]


# --- the run itself ---------------------------------------------------------------------------


def test_connection_string_names_the_address_without_a_port(dpsd_on_443: DpsdProcess) -> None:
    info = dpsd_on_443.info
    assert info["serviceConnectionString"].startswith(f"HostName={ADDRESS};"), info
    assert info["endpoints"]["https"] == f"https://{ADDRESS}:{PORT}", info
    assert info["endpoints"]["http"] is None, info


def test_every_scenario_completed(scenarios: dict[str, Result]) -> None:
    failed = {name: line.get("error") for name, line in scenarios.items() if not line["ok"]}
    assert not failed, json.dumps(failed, indent=2)


# --- individual enrollments -------------------------------------------------------------------


def test_enrollment_create_generates_symmetric_keys(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_create")
    assert_json_response(result)
    body = result["body"]
    assert body["registrationId"] == result["id"]
    assert body["etag"]
    assert body["createdDateTimeUtc"]
    assert body["lastUpdatedDateTimeUtc"]
    assert body["provisioningStatus"] == "enabled"
    assert body["attestation"]["type"] == "symmetricKey"
    assert_generated_keys(body["attestation"]["symmetricKey"])


def test_enrollment_get_hides_the_keys(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_get")
    assert_json_response(result)
    body = result["body"]
    assert body["registrationId"] == result["id"]
    assert body["etag"] == result["createdEtag"]
    assert_generated_keys(result["createdKeys"])
    assert_no_keys(body, result["createdKeys"])


def test_enrollment_update_with_the_etag_it_was_given(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_update_with_etag")
    assert_json_response(result)
    body = result["body"]
    assert body["registrationId"] == result["id"]
    assert body["provisioningStatus"] == "disabled"
    assert body["deviceId"] == f"{result['id']}-device"
    assert body["etag"]
    assert body["etag"] != result["createdEtag"]
    assert body["createdDateTimeUtc"] == result["createdDateTimeUtc"]
    assert body["attestation"]["symmetricKey"] == result["createdKeys"]
    fetched = result["fetched"]
    assert fetched["etag"] == body["etag"]
    assert fetched["provisioningStatus"] == "disabled"
    assert fetched["deviceId"] == body["deviceId"]


def test_enrollment_update_with_a_stale_etag_is_412(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_update_stale_etag")
    assert_sdk_error(result["stale"], 412, "InvalidEtagError")
    assert result["updatedEtag"] != result["createdEtag"]
    fetched = result["fetched"]
    assert fetched["etag"] == result["updatedEtag"], "a refused update must change nothing"
    assert fetched["provisioningStatus"] == "disabled"


def test_enrollment_create_without_etag_on_an_existing_id_is_409(
    scenarios: dict[str, Result],
) -> None:
    result = scenario(scenarios, "enrollment_create_existing_without_etag")
    assert_sdk_error(result["again"], 409, "DeviceAlreadyExistsError")


def test_enrollment_attestation_mechanism_returns_the_keys(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_attestation_mechanism")
    assert_json_response(result)
    assert result["body"] == {"type": "symmetricKey", "symmetricKey": result["createdKeys"]}
    assert_not_found(result["missing"])


def test_enrollment_query_pages_through_every_enrollment_once(
    scenarios: dict[str, Result],
) -> None:
    assert_pages_every_record_once(scenario(scenarios, "enrollment_query_paging"))


def test_enrollment_bulk_create_and_delete(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_bulk")
    ids = result["ids"]
    created = result["created"]
    assert_json_response(created)
    assert created["body"]["isSuccessful"] is True, created
    assert not created["body"].get("errors"), created
    assert result["fetched"] == ids

    duplicate = result["duplicate"]
    assert_json_response(duplicate)
    assert duplicate["body"]["isSuccessful"] is False, duplicate
    errors = duplicate["body"]["errors"]
    assert [error["registrationId"] for error in errors] == [ids[0]], errors
    assert_bulk_error_code(errors[0], 409)

    deleted = result["deleted"]
    assert_json_response(deleted)
    assert deleted["body"]["isSuccessful"] is False, deleted
    errors = deleted["body"]["errors"]
    assert [error["registrationId"] for error in errors] == [result["missing"]], errors
    assert_bulk_error_code(errors[0], 404)
    for failure in result["after"]:
        assert_not_found(failure)


def test_enrollment_delete_by_id_and_by_object_with_etag(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "enrollment_delete")
    assert_succeeded(result["deleteById"])
    assert_not_found(result["getAfterDeleteById"])
    assert_sdk_error(result["deleteStaleObject"], 412, "InvalidEtagError")
    assert_succeeded(result["deleteObject"])
    assert_not_found(result["getAfterDeleteObject"])
    assert_not_found(result["deleteAgain"])


def test_enrollment_get_of_an_unknown_id_is_404(scenarios: dict[str, Result]) -> None:
    assert_not_found(scenario(scenarios, "enrollment_get_unknown")["get"])


# --- enrollment groups ------------------------------------------------------------------------


def test_group_create_generates_symmetric_keys(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "group_create")
    assert_json_response(result)
    body = result["body"]
    assert body["enrollmentGroupId"] == result["id"]
    assert body["etag"]
    assert body["createdDateTimeUtc"]
    assert body["provisioningStatus"] == "enabled"
    assert body["attestation"]["type"] == "symmetricKey"
    assert_generated_keys(body["attestation"]["symmetricKey"])


def test_group_get_hides_the_keys(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "group_get")
    assert_json_response(result)
    body = result["body"]
    assert body["enrollmentGroupId"] == result["id"]
    assert body["etag"] == result["createdEtag"]
    assert_generated_keys(result["createdKeys"])
    assert_no_keys(body, result["createdKeys"])


def test_group_update_with_the_etag_it_was_given(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "group_update_with_etag")
    assert_json_response(result)
    body = result["body"]
    assert body["enrollmentGroupId"] == result["id"]
    assert body["provisioningStatus"] == "disabled"
    assert body["etag"]
    assert body["etag"] != result["createdEtag"]
    assert body["createdDateTimeUtc"] == result["createdDateTimeUtc"]
    assert body["attestation"]["symmetricKey"] == result["createdKeys"]
    assert result["fetched"]["etag"] == body["etag"]
    assert result["fetched"]["provisioningStatus"] == "disabled"


def test_group_update_with_a_stale_etag_is_412(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "group_update_stale_etag")
    assert_sdk_error(result["stale"], 412, "InvalidEtagError")
    assert result["fetched"]["etag"] == result["updatedEtag"]
    assert result["fetched"]["provisioningStatus"] == "disabled"


def test_group_create_without_etag_on_an_existing_id_is_409(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "group_create_existing_without_etag")
    assert_sdk_error(result["again"], 409, "DeviceAlreadyExistsError")


def test_group_attestation_mechanism_on_the_lower_case_path(scenarios: dict[str, Result]) -> None:
    # The SDK posts to /enrollmentgroups/{id}/attestationmechanism, unlike its other group calls.
    result = scenario(scenarios, "group_attestation_mechanism")
    assert_json_response(result)
    assert result["body"] == {"type": "symmetricKey", "symmetricKey": result["createdKeys"]}
    assert_not_found(result["missing"])


def test_group_query_pages_through_every_group_once(scenarios: dict[str, Result]) -> None:
    assert_pages_every_record_once(scenario(scenarios, "group_query_paging"))


def test_group_bulk_create_and_delete(scenarios: dict[str, Result]) -> None:
    # The SDK has no group bulk method: the script posts through the SDK's own RestApiClient.
    result = scenario(scenarios, "group_bulk")
    created = result["created"]
    assert_json_response(created)
    assert created["body"]["isSuccessful"] is True, created
    assert not created["body"].get("errors"), created
    assert result["fetched"] == result["ids"]
    deleted = result["deleted"]
    assert_json_response(deleted)
    assert deleted["body"]["isSuccessful"] is False, deleted
    errors = deleted["body"]["errors"]
    assert [error["enrollmentGroupId"] for error in errors] == [result["missing"]], errors
    assert_bulk_error_code(errors[0], 404)
    for failure in result["after"]:
        assert_not_found(failure)


def test_group_delete_by_id_and_by_object_with_etag(scenarios: dict[str, Result]) -> None:
    result = scenario(scenarios, "group_delete")
    assert_succeeded(result["deleteById"])
    assert_not_found(result["getAfterDeleteById"])
    assert_sdk_error(result["deleteStaleObject"], 412, "InvalidEtagError")
    assert_succeeded(result["deleteObject"])
    assert_not_found(result["getAfterDeleteObject"])
    assert_not_found(result["deleteAgain"])


def test_group_get_of_an_unknown_id_is_404(scenarios: dict[str, Result]) -> None:
    assert_not_found(scenario(scenarios, "group_get_unknown")["get"])


# --- registration states ----------------------------------------------------------------------


def test_registration_state_get_of_an_unknown_id_is_404(scenarios: dict[str, Result]) -> None:
    assert_not_found(scenario(scenarios, "registration_get_unknown")["get"])


def test_registration_state_delete_of_an_unknown_id_is_404(scenarios: dict[str, Result]) -> None:
    assert_not_found(scenario(scenarios, "registration_delete_unknown")["delete"])


def test_registration_state_query_of_a_group_without_devices_is_empty(
    scenarios: dict[str, Result],
) -> None:
    result = scenario(scenarios, "registration_group_query_empty")
    assert_json_response(result)
    assert result["body"] == []
    assert result["continuation"] is None
    assert result["hasMoreResults"] is False
