"""The spec's IndividualEnrollment_CreateOrUpdate examples, as sent and corrected.

The examples are generator output: sent as they are they break the service's own rules,
and dpsd says which rule with a 400. Each corrected copy changes only what breaks a rule,
and the reason stands next to each change.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from tests.conftest import SPEC, ServiceApi

EXAMPLES = SPEC / "examples"
MAXIMUM_SET = (
    SPEC
    / "examples-variants"
    / "fa9f9e93"
    / "IndividualEnrollment_CreateOrUpdate_MaximumSet_Gen.json"
)
SERVER_FIELDS = {"etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc"}


def load(path: Path) -> dict[str, Any]:
    example: dict[str, Any] = json.loads(path.read_text())
    return example


def request_body(example: dict[str, Any]) -> dict[str, Any]:
    parameters = example["parameters"]
    body: dict[str, Any] = parameters.get("enrollment") or parameters["body"]
    return body


async def test_minimum_set_as_sent_names_the_id_mismatch(service_api: ServiceApi) -> None:
    example = load(EXAMPLES / "IndividualEnrollment_CreateOrUpdate_MinimumSet_Gen.json")
    path_id = example["parameters"]["id"]
    response = await service_api.put(f"/enrollments/{path_id}", request_body(example))
    assert response.status_code == 400
    message = response.json()["message"]
    assert "'kz'" in message
    assert repr(path_id) in message
    assert (await service_api.get("/enrollments/kz")).status_code == 404


async def test_minimum_set_corrected(service_api: ServiceApi) -> None:
    example = load(EXAMPLES / "IndividualEnrollment_CreateOrUpdate_MinimumSet_Gen.json")
    body = request_body(example)
    # Correction: the path id must be the body's registrationId.
    response = await service_api.put(f"/enrollments/{body['registrationId']}", body)
    assert response.status_code == 200, response.text
    returned = response.json()
    expected = example["responses"]["200"]["body"]
    assert {key: returned[key] for key in expected} == expected
    assert returned.keys() >= SERVER_FIELDS
    assert returned["provisioningStatus"] == "enabled"


async def link_hubs(service_api: ServiceApi, body: dict[str, Any]) -> None:
    for hub in {body["iotHubHostName"], *body["iotHubs"]}:
        await service_api.runtime.hubs.link(hub)


def _maximum_set_corrected(example: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    body = copy.deepcopy(request_body(example))
    attestation = body["attestation"]
    # Correction: an attestation carries the one mechanism its type names. The example
    # says "none" and sends all three; keep the symmetric key.
    attestation["type"] = "symmetricKey"
    del attestation["tpm"], attestation["x509"]
    # Correction: symmetric keys are base64 of 16 to 64 bytes; the example's are not base64.
    attestation["symmetricKey"] = {
        "primaryKey": base64.b64encode(b"p" * 32).decode(),
        "secondaryKey": base64.b64encode(b"s" * 32).decode(),
    }
    # Correction: a webhook is an absolute http(s) URL called at a known api-version.
    body["customAllocationDefinition"] = {
        "webhookUrl": "https://todqbubyxeumrtvhsscedwrkz.example/api/allocate",
        "apiVersion": "2021-10-01",
    }
    # The path id must be the body's registrationId: use the body's.
    return body["registrationId"], body


async def test_maximum_set_as_sent_names_each_broken_rule(service_api: ServiceApi) -> None:
    example = load(MAXIMUM_SET)
    parameters = example["parameters"]
    body = request_body(example)
    headers = {"If-Match": parameters["If-Match"]}

    as_sent = await service_api.put(f"/enrollments/{parameters['id']}", body, **headers)
    assert as_sent.status_code == 400
    assert "does not match the id 'ivz' in the path" in as_sent.json()["message"]

    id_fixed = await service_api.put(f"/enrollments/{body['registrationId']}", body, **headers)
    assert id_fixed.status_code == 400
    assert "attestation type is 'none'" in id_fixed.json()["message"]

    typed = copy.deepcopy(body)
    typed["attestation"] = {
        "type": "symmetricKey",
        "symmetricKey": body["attestation"]["symmetricKey"],
    }
    webhook_wrong = await service_api.put(f"/enrollments/{body['registrationId']}", typed)
    assert webhook_wrong.status_code == 400
    assert "webhookUrl must be an absolute http or https URL" in webhook_wrong.json()["message"]

    _, corrected = _maximum_set_corrected(example)
    typed["customAllocationDefinition"] = corrected["customAllocationDefinition"]
    hubs_unknown = await service_api.put(f"/enrollments/{body['registrationId']}", typed)
    assert hubs_unknown.status_code == 400
    assert "'lwgwrfdherfrbowfdbrdhvnragwrs' is not linked" in hubs_unknown.json()["message"]

    await link_hubs(service_api, body)
    keys_wrong = await service_api.put(f"/enrollments/{body['registrationId']}", typed)
    assert keys_wrong.status_code == 400
    assert "symmetricKey.primaryKey is not valid base64" in keys_wrong.json()["message"]

    query = await service_api.post("/enrollments/query", {"query": "SELECT *"})
    assert query.json() == []


async def test_maximum_set_corrected(service_api: ServiceApi) -> None:
    example = load(MAXIMUM_SET)
    path_id, body = _maximum_set_corrected(example)
    # Correction: an enrollment names only IoT hubs linked to the service; link the example's.
    await link_hubs(service_api, body)
    # Correction: the example's If-Match names no existing etag, so the first PUT is a
    # create (no If-Match) and the second an update at the etag the first returned.
    created = await service_api.put(f"/enrollments/{path_id}", body)
    assert created.status_code == 200, created.text
    updated = await service_api.put(
        f"/enrollments/{path_id}", body, **{"If-Match": created.json()["etag"]}
    )
    assert updated.status_code == 200, updated.text
    returned = updated.json()

    expected = copy.deepcopy(example["responses"]["200"]["body"])
    # registrationState is read-only: it is shown once a device has registered, never
    # taken from a request. The server sets etag and both timestamps.
    del expected["registrationState"]
    for field in SERVER_FIELDS:
        del expected[field]
    expected["attestation"] = body["attestation"]
    expected["customAllocationDefinition"] = body["customAllocationDefinition"]
    assert {key: returned[key] for key in expected} == expected
    assert returned.keys() >= SERVER_FIELDS
    assert returned["etag"] != created.json()["etag"]
    assert returned["createdDateTimeUtc"] == created.json()["createdDateTimeUtc"]

    fetched = (await service_api.get(f"/enrollments/{path_id}")).json()
    assert fetched["attestation"] == {"type": "symmetricKey"}
    assert fetched["initialTwin"] == expected["initialTwin"]
