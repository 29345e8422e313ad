"""Every request example of the service spec, sent as it is and then corrected.

The examples are generator output. Sent as they are, each gets either the answer the
example shows or a DPS error that names the rule it breaks. Each correction says why it is
needed; the corrected request gets the example's status, and its answer is checked against
the spec's schema for that operation.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import checks

from dpsd.domain.etag import new_etag
from dpsd.domain.registration import DeviceRegistrationState, RegistrationStatus
from tests.conftest import SPEC, ServiceApi

SCHEMA = schemathesis.openapi.from_dict(json.loads((SPEC / "service.json").read_text()))
CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
BODY_PARAMETERS = ("body", "enrollment", "enrollmentGroup", "querySpecification", "bulkOperation")
KEYS = {
    "primaryKey": base64.b64encode(b"p" * 32).decode(),
    "secondaryKey": base64.b64encode(b"s" * 32).decode(),
}
WEBHOOK = {"webhookUrl": "https://allocation.example/api/allocate", "apiVersion": "2021-10-01"}

ROUTES = {
    "IndividualEnrollment_CreateOrUpdate": ("PUT", "/enrollments/{id}"),
    "IndividualEnrollment_Get": ("GET", "/enrollments/{id}"),
    "IndividualEnrollment_Delete": ("DELETE", "/enrollments/{id}"),
    "IndividualEnrollment_GetAttestationMechanism": (
        "POST",
        "/enrollments/{id}/attestationmechanism",
    ),
    "IndividualEnrollment_Query": ("POST", "/enrollments/query"),
    "IndividualEnrollment_RunBulkOperation": ("POST", "/enrollments"),
    "EnrollmentGroup_CreateOrUpdate": ("PUT", "/enrollmentGroups/{id}"),
    "EnrollmentGroup_Get": ("GET", "/enrollmentGroups/{id}"),
    "EnrollmentGroup_Delete": ("DELETE", "/enrollmentGroups/{id}"),
    "EnrollmentGroup_GetAttestationMechanism": (
        "POST",
        "/enrollmentGroups/{id}/attestationmechanism",
    ),
    "EnrollmentGroup_Query": ("POST", "/enrollmentGroups/query"),
    "EnrollmentGroup_RunBulkOperation": ("POST", "/enrollmentGroups"),
    "DeviceRegistrationState_Get": ("GET", "/registrations/{id}"),
    "DeviceRegistrationState_Delete": ("DELETE", "/registrations/{id}"),
    "DeviceRegistrationState_Query": ("POST", "/registrations/{id}/query"),
}


@dataclass
class Request:
    operation: str
    path_id: str | None
    headers: dict[str, str]
    body: Any
    notes: list[str] = field(default_factory=list)

    def correct(self, reason: str) -> None:
        self.notes.append(reason)


def load(path: Path) -> tuple[Request, int]:
    example = json.loads(path.read_text())
    parameters = example["parameters"]
    headers = {
        name: str(value)
        for name, value in parameters.items()
        if name.lower() in ("if-match", "x-ms-max-item-count", "x-ms-continuation")
    }
    body = next((parameters[name] for name in BODY_PARAMETERS if name in parameters), None)
    request = Request(example["operationId"], parameters.get("id"), headers, copy.deepcopy(body))
    return request, int(next(iter(example["responses"])))


async def send(service_api: ServiceApi, request: Request) -> httpx.Response:
    method, template = ROUTES[request.operation]
    path = template.format(id=request.path_id)
    if request.body is None:
        return (
            await service_api.post(path, **request.headers)
            if method == "POST"
            else await (
                service_api.get(path)
                if method == "GET"
                else service_api.delete(path, **request.headers)
            )
        )
    if method == "PUT":
        return await service_api.put(path, request.body, **request.headers)
    return await service_api.post(path, request.body, **request.headers)


def validate(request: Request, response: httpx.Response) -> None:
    operation = SCHEMA.find_operation_by_id(request.operation)
    case = operation.Case(
        path_parameters={"id": request.path_id} if request.path_id else None,
        query={"api-version": "2021-10-01"},
        body=request.body,
    )
    # The spec declares application/json for every answer, but a 204 has no body and, as
    # the real service sends it, no Content-Type.
    selected = CHECKS if response.status_code != 204 else CHECKS[:1] + CHECKS[2:]
    case.validate_response(response, checks=selected)


# --- corrections ----------------------------------------------------------------------


def valid_attestation(attestation: dict[str, Any], *, group: bool) -> dict[str, Any]:
    """The example's attestation says type 'none' and carries every mechanism, with keys
    that are not base64: keep only a symmetric key, with valid keys. (An individual
    enrollment may say 'none' with no mechanism; a group must attest somehow.)"""
    if attestation == {"type": "none"} and not group:
        return attestation
    return {"type": "symmetricKey", "symmetricKey": dict(KEYS)}


async def link_hubs(service_api: ServiceApi, record: dict[str, Any], request: Request) -> None:
    named = {*record.get("iotHubs", []), *filter(None, [record.get("iotHubHostName")])}
    for hub in named:
        if await service_api.runtime.hubs.hubs.get(hub) is None:
            await service_api.runtime.hubs.link(hub)
    if named:
        request.correct("an enrollment names only linked IoT hubs: link the example's first")


def correct_record(record: dict[str, Any], request: Request, *, group: bool) -> dict[str, Any]:
    fixed = copy.deepcopy(record)
    fixed["attestation"] = valid_attestation(fixed["attestation"], group=group)
    request.correct("attestation: one mechanism, of the type named, with base64 keys")
    if "customAllocationDefinition" in fixed:
        fixed["customAllocationDefinition"] = dict(WEBHOOK)
        request.correct("webhookUrl must be an http(s) URL and apiVersion a DPS api-version")
    return fixed


async def create_individual(service_api: ServiceApi, registration_id: str) -> str:
    body = {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}}
    response = await service_api.put(f"/enrollments/{registration_id}", body)
    assert response.status_code == 200, response.text
    etag: str = response.json()["etag"]
    return etag


async def create_group(service_api: ServiceApi, group_id: str) -> str:
    body = {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}}
    response = await service_api.put(f"/enrollmentGroups/{group_id}", body)
    assert response.status_code == 200, response.text
    etag: str = response.json()["etag"]
    return etag


async def create_state(service_api: ServiceApi, registration_id: str) -> str:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    state = DeviceRegistrationState(
        registration_id=registration_id,
        status=RegistrationStatus.ASSIGNED,
        etag=new_etag(b"0123456789abcdef"),
        created=moment,
        last_updated=moment,
        assigned_hub="hub.example",
        device_id=registration_id,
    )
    await service_api.runtime.registration_states.put(state)
    return state.etag


Correction = Callable[[ServiceApi, Request], Any]


async def correct_create_or_update(service_api: ServiceApi, request: Request) -> None:
    group = request.operation.startswith("EnrollmentGroup")
    id_field = "enrollmentGroupId" if group else "registrationId"
    request.body = correct_record(request.body, request, group=group)
    await link_hubs(service_api, request.body, request)
    request.path_id = request.body[id_field]
    request.correct("the path id must be the body's id")
    if "If-Match" in request.headers:
        del request.headers["If-Match"]
        request.correct("If-Match names no existing etag: create without it")


async def correct_by_creating_first(service_api: ServiceApi, request: Request) -> None:
    assert request.path_id is not None
    creators = {
        "IndividualEnrollment": create_individual,
        "EnrollmentGroup": create_group,
        "DeviceRegistrationState": create_state,
    }
    etag = await creators[request.operation.split("_")[0]](service_api, request.path_id)
    request.correct("the example reads or deletes a record it never made: make it first")
    if "If-Match" in request.headers:
        request.headers["If-Match"] = etag
        request.correct("If-Match must be the record's etag")


async def correct_query(service_api: ServiceApi, request: Request) -> None:
    if request.body is not None:
        request.body = {"query": "SELECT *"}
        request.correct("'xdvc' is not a query: SELECT *")
    if "x-ms-continuation" in request.headers:
        del request.headers["x-ms-continuation"]
        request.correct("a continuation token must come from an earlier page")


async def correct_bulk(service_api: ServiceApi, request: Request) -> None:
    group = request.operation.startswith("EnrollmentGroup")
    key = "enrollmentGroups" if group else "enrollments"
    request.body[key] = [correct_record(item, request, group=group) for item in request.body[key]]
    for item in request.body[key]:
        await link_hubs(service_api, item, request)


CORRECTIONS: dict[str, Correction] = {
    "CreateOrUpdate": correct_create_or_update,
    "Get": correct_by_creating_first,
    "Delete": correct_by_creating_first,
    "GetAttestationMechanism": correct_by_creating_first,
    "Query": correct_query,
    "RunBulkOperation": correct_bulk,
}

EXAMPLES = sorted(
    path for path in (SPEC / "examples").glob("*.json") if not path.name.startswith("Runtime")
)


def test_thirty_service_examples() -> None:
    assert len(EXAMPLES) == 30


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
async def test_example_as_sent_and_corrected(service_api: ServiceApi, path: Path) -> None:
    request, expected_status = load(path)
    as_sent = await send(service_api, request)
    answer = as_sent.json() if as_sent.content else None
    succeeded = not isinstance(answer, dict) or answer.get("isSuccessful", True)
    if as_sent.status_code == expected_status and succeeded:
        validate(request, as_sent)  # valid as it stands: nothing to correct
        return
    if as_sent.status_code != expected_status:
        body = as_sent.json()
        assert 400 <= as_sent.status_code < 500, as_sent.text
        assert isinstance(body["errorCode"], int), body
        assert body["message"], body

    await CORRECTIONS[request.operation.split("_", 1)[1]](service_api, request)
    corrected = await send(service_api, request)
    assert corrected.status_code == expected_status, (request.notes, corrected.text)
    validate(request, corrected)
    if request.operation.endswith("RunBulkOperation"):
        assert corrected.json() == {"isSuccessful": True, "errors": []}, request.notes
