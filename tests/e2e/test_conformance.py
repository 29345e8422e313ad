"""Conformance with the official service spec: schemathesis generates requests for all 15
operations of spec/service.json and sends them, signed with the owner policy, to a
running dpsd. No answer may be a 5xx, every answer must match the spec's schemas, and every
error must carry the DPS error body."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.conftest import SPEC, sas_token
from tests.e2e.process import DpsdProcess

pytestmark = pytest.mark.e2e


def _spec_as_served() -> dict[str, Any]:
    """The spec, with a TwinCollection any JSON object: a collection the client writes
    (optionalDeviceInformation, initialTwin tags and desired properties) holds any JSON
    values, as twins do, and dpsd keeps and returns it as sent, although the spec types its
    keys ``version`` and ``count`` (its names for a twin's ``$version``) and every other
    value as an object (docs/compatibility.md)."""
    spec: dict[str, Any] = json.loads((SPEC / "service.json").read_text())
    collection = spec["definitions"]["TwinCollection"]
    collection.pop("properties", None)
    collection.pop("additionalProperties", None)
    return spec


schema = schemathesis.openapi.from_dict(_spec_as_served())
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def _valid_id(generated: object) -> str:
    return f"id-{zlib.crc32(repr(generated).encode()):08x}"


def _repaired_settings(body: dict[str, Any]) -> dict[str, Any]:
    """Keep the generated fields that can be valid as they are; make the rest valid."""
    kept = {
        key: body[key]
        for key in (
            "initialTwin",
            "optionalDeviceInformation",
            "provisioningStatus",
            "reprovisionPolicy",
            "capabilities",
        )
        if key in body
    }
    if body.get("allocationPolicy") in ("hashed", "geoLatency"):
        kept["allocationPolicy"] = body["allocationPolicy"]
    kept["attestation"] = {"type": "symmetricKey"}
    return kept


def _repair(case: Any) -> None:
    """Make half of the generated requests valid, so that success answers are checked too.

    Generated data breaks the service's own rules almost always (random ids and attestation
    types); the other half goes out as generated, to check the errors."""
    if zlib.crc32(repr((case.method, case.path, case.path_parameters)).encode()) % 2:
        return
    if case.path_parameters and "id" in case.path_parameters:
        case.path_parameters = {"id": _valid_id(case.path_parameters["id"])}
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "if-match"}
    body = case.body if isinstance(case.body, dict) else None
    operation = case.operation.definition.raw.get("operationId", "")
    if body is None:
        return
    if operation.endswith("_CreateOrUpdate"):
        id_field = "registrationId" if operation.startswith("Individual") else "enrollmentGroupId"
        case.body = {**_repaired_settings(body), id_field: case.path_parameters["id"]}
    elif operation.endswith("_Query"):
        case.body = {"query": "SELECT *"}
    elif operation.endswith("_RunBulkOperation"):
        key, id_field = (
            ("enrollments", "registrationId")
            if operation.startswith("Individual")
            else ("enrollmentGroups", "enrollmentGroupId")
        )
        items = [item for item in body.get(key) or [] if isinstance(item, dict)][:10]
        mode = body.get("mode") if body.get("mode") in ("create", "update", "delete") else "create"
        case.body = {
            "mode": mode,
            key: [{**_repaired_settings(item), id_field: _valid_id(item)} for item in items]
            or [{"attestation": {"type": "symmetricKey"}, id_field: _valid_id(body)}],
        }


@schema.hook
def map_case(context: Any, case: Any) -> Any:
    _repair(case)
    return case


def test_the_spec_has_fifteen_operations() -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15


def _error_body_is_dps_shaped(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body.get("errorCode"), int), body
    assert body["errorCode"] // 1000 == response.status_code, body
    assert {"trackingId", "message", "timestampUtc", "info"} <= body.keys(), body
    assert response.headers.get("x-ms-error-code") == [str(body["errorCode"])]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms(case: Any, dpsd_server: DpsdProcess) -> None:
    base_url = dpsd_server.info["endpoints"]["http"]
    owner_key = _owner_key(dpsd_server.info["serviceConnectionString"])
    case.query = {**(case.query or {}), "api-version": "2021-10-01"}
    headers = {"Authorization": sas_token("localhost", "provisioningserviceowner", owner_key)}
    response = case.call(base_url=base_url, headers=headers)
    # A 204 has no body and, as the real service sends it, no Content-Type, although the
    # spec declares application/json for every answer (docs/compatibility.md).
    selected = [
        check
        for check in CHECKS
        if response.status_code != 204 or check is not checks.content_type_conformance
    ]
    case.validate_response(response, checks=selected)
    _error_body_is_dps_shaped(response)


def _owner_key(connection_string: str) -> str:
    fields = dict(part.split("=", 1) for part in connection_string.split(";"))
    return fields["SharedAccessKey"]
