"""TPM devices over HTTPS, in-process: the 401 challenge, the signed registration, polls,
the hub key in the final answer, and every refusal (each leaving nothing behind). The
device is tests/tpm/soft_tpm.py (the real TPM: tests/e2e/test_tpm_devices.py)."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ServiceApi
from tests.integration.test_custom_allocation import Webhook, webhook  # noqa: F401 - fixture
from tests.integration.test_device_registration_api import DEVICE_API
from tests.integration.test_enrollments_api import assert_dps_error
from tests.integration.test_hub_landing import HUB, RemoteHub, link_remote, remote_hub, writing_to  # noqa: F401
from tests.tpm.soft_tpm import SoftTpm

DEVICE = SoftTpm.make(0)
OTHER = SoftTpm.make(1)


async def enroll_tpm(api: ServiceApi, registration_id: str, device: SoftTpm, **extra: Any) -> None:
    body = {
        "registrationId": registration_id,
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": device.ek_b64}},
        **extra,
    }
    response = await api.put(f"/enrollments/{registration_id}", body)
    assert response.status_code == 200, response.text


def path(api: ServiceApi, registration_id: str, tail: str = "register") -> str:
    return f"/{api.runtime.id_scope}/registrations/{registration_id}/{tail}{DEVICE_API}"


def tpm_body(registration_id: str, device: SoftTpm, **extra: Any) -> dict[str, Any]:
    keys = {"endorsementKey": device.ek_b64, "storageRootKey": device.srk_b64}
    return {"registrationId": registration_id, "tpm": keys, **extra}


async def ask_challenge(
    api: ServiceApi, registration_id: str, device: SoftTpm, **extra: Any
) -> httpx.Response:
    return await api.client.put(
        path(api, registration_id), json=tpm_body(registration_id, device, **extra)
    )


async def answer_challenge(api: ServiceApi, registration_id: str, device: SoftTpm) -> str:
    """The 401 challenge opened by the device's TPM: its token."""
    challenged = await ask_challenge(api, registration_id, device)
    assert challenged.status_code == 401, challenged.text
    body = challenged.json()
    assert set(body) == {"authenticationKey", "keyName", "message"}
    assert body["keyName"] == "registration"
    device.activate(base64.b64decode(body["authenticationKey"]))
    return device.token(api.runtime.id_scope, registration_id)


async def signed(
    api: ServiceApi, registration_id: str, device: SoftTpm, token: str, **extra: Any
) -> httpx.Response:
    return await api.client.put(
        path(api, registration_id),
        json=tpm_body(registration_id, device, **extra),
        headers={"Authorization": token},
    )


async def provision_tpm(
    api: ServiceApi, registration_id: str, device: SoftTpm, **extra: Any
) -> tuple[dict[str, Any], str]:
    token = await answer_challenge(api, registration_id, device)
    started = await signed(api, registration_id, device, token, **extra)
    assert started.status_code == 202, started.text
    await api.runtime.devices.drain()
    operation = started.json()["operationId"]
    polled = await api.client.get(
        path(api, registration_id, f"operations/{operation}"), headers={"Authorization": token}
    )
    assert polled.status_code == 200, polled.text
    return polled.json(), token


async def nothing_recorded(api: ServiceApi, registration_id: str) -> None:
    assert (await api.get(f"/registrations/{registration_id}")).status_code == 404


async def test_a_tpm_device_provisions_and_is_given_its_hub_key(
    service_api: ServiceApi,
    writing_to: RemoteHub,  # noqa: F811 - the fixture
) -> None:
    registration_id = DEVICE.registration_id()  # the id the C and Node SDKs derive
    await link_remote(service_api, writing_to.connection_string)
    await enroll_tpm(service_api, registration_id, DEVICE, deviceId="gateway-1")
    outcome, token = await provision_tpm(service_api, registration_id, DEVICE)
    state = outcome["registrationState"]
    assert (outcome["status"], state["assignedHub"], state["deviceId"]) == (
        "assigned",
        HUB,
        "gateway-1",
    )
    hub_key = DEVICE.activate(base64.b64decode(state["tpm"]["authenticationKey"]))
    landed = await writing_to.runtime.hub_registry.devices.get(HUB, "gateway-1")
    assert landed is not None
    keys = landed.identity.authentication.symmetric_key
    assert keys is not None
    assert keys.primary_key == base64.b64encode(hub_key).decode()
    assert landed.identity.authentication.type.value == "sas"

    # The service API shows the registration, never a key.
    recorded = (await service_api.get(f"/registrations/{registration_id}")).json()
    assert recorded["status"] == "assigned"
    assert "tpm" not in recorded
    # The status lookup reads with the same token.
    lookup = await service_api.client.post(
        path(service_api, registration_id, "").replace("/?", "?"),
        json={"registrationId": registration_id},
        headers={"Authorization": token},
    )
    assert lookup.status_code == 200, lookup.text

    # The same TPM registering again is given the same hub key, in a new blob.
    again, _ = await provision_tpm(service_api, registration_id, DEVICE)
    assert again["registrationState"]["substatus"] == "reprovisionedToInitialAssignment"
    blob = again["registrationState"]["tpm"]["authenticationKey"]
    assert blob != state["tpm"]["authenticationKey"]
    assert DEVICE.activate(base64.b64decode(blob)) == hub_key


async def test_custom_allocation_and_reprovisioning_apply_to_tpm_devices(
    service_api: ServiceApi,
    webhook: Webhook,  # noqa: F811
) -> None:
    for hub in ("hub-a.example", "hub-b.example"):
        await service_api.runtime.hubs.link(hub)
    definition = {"webhookUrl": f"{webhook.url}/allocate", "apiVersion": "2021-10-01"}
    await enroll_tpm(
        service_api,
        "tpm-custom",
        DEVICE,
        allocationPolicy="custom",
        customAllocationDefinition=definition,
    )
    outcome, _ = await provision_tpm(service_api, "tpm-custom", DEVICE, payload={"m": 1})
    state = outcome["registrationState"]
    assert (state["assignedHub"], state["payload"]["site"]) == ("hub-b.example", "north")
    assert "authenticationKey" in state["tpm"]
    context = webhook.requests[0]["deviceRuntimeContext"]
    assert (context["tpm"], context["payload"]) == ({}, {"m": 1})


async def test_a_disabled_enrollment_answers_disabled_without_a_key(
    service_api: ServiceApi,
) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll_tpm(service_api, "tpm-off", DEVICE, provisioningStatus="disabled")
    outcome, _ = await provision_tpm(service_api, "tpm-off", DEVICE)
    assert outcome["status"] == "disabled"
    assert outcome["registrationState"]["errorCode"] == 401008
    assert "tpm" not in outcome["registrationState"]


async def test_an_unknown_registration_id_is_404201_and_stores_nothing(
    service_api: ServiceApi,
) -> None:
    response = await ask_challenge(service_api, "nobody", DEVICE)
    assert_dps_error(response, 404, 404201)
    assert await service_api.runtime.devices.tpm.challenges.get("nobody") is None


async def test_another_ek_is_401002_without_a_challenge(service_api: ServiceApi) -> None:
    await enroll_tpm(service_api, "tpm-1", DEVICE)
    response = await ask_challenge(service_api, "tpm-1", OTHER)
    assert_dps_error(response, 401, 401002, "endorsement key")
    assert "authenticationKey" not in response.json()
    assert await service_api.runtime.devices.tpm.challenges.get("tpm-1") is None


async def test_a_symmetric_key_enrollment_gives_no_tpm_challenge(service_api: ServiceApi) -> None:
    body = {"registrationId": "sym-1", "attestation": {"type": "symmetricKey"}}
    assert (await service_api.put("/enrollments/sym-1", body)).status_code == 200
    response = await ask_challenge(service_api, "sym-1", DEVICE)
    assert_dps_error(response, 401, 401002, "does not attest with a TPM")


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"endorsementKey": "bm90IGEga2V5"}, "tpm.endorsementKey"),
        ({"endorsementKey": DEVICE.ek_b64}, "tpm.storageRootKey is required"),
        ({"endorsementKey": DEVICE.ek_b64, "storageRootKey": "!!"}, "tpm.storageRootKey"),
        ({"storageRootKey": DEVICE.srk_b64}, "tpm.endorsementKey is required"),
    ],
)
async def test_malformed_tpm_keys_are_400(
    service_api: ServiceApi, keys: dict[str, str], named: str
) -> None:
    await enroll_tpm(service_api, "tpm-1", DEVICE)
    response = await service_api.client.put(
        path(service_api, "tpm-1"), json={"registrationId": "tpm-1", "tpm": keys}
    )
    assert_dps_error(response, 400, 400004, named)
    assert await service_api.runtime.devices.tpm.challenges.get("tpm-1") is None


async def test_tampered_expired_and_stale_tokens_are_401_and_leave_nothing(
    service_api: ServiceApi,
) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll_tpm(service_api, "tpm-1", DEVICE)
    challenges = service_api.runtime.devices.tpm.challenges
    scope = service_api.runtime.id_scope
    first = await answer_challenge(service_api, "tpm-1", DEVICE)
    pending = await challenges.get("tpm-1")

    tampered = first.replace("sig=", "sig=A", 1)
    expired = DEVICE.token(scope, "tpm-1", expiry=int(time.time()) - 5)
    elsewhere = DEVICE.token(scope, "tpm-2")
    for token, said in ((tampered, "not signed"), (expired, "expired"), (elsewhere, "audience")):
        assert_dps_error(await signed(service_api, "tpm-1", DEVICE, token), 401, 401002, said)
    assert await challenges.get("tpm-1") == pending  # not held any longer
    # Another device's EK in the body of a request signed right.
    response = await signed(
        service_api,
        "tpm-1",
        DEVICE,
        first,
        tpm={"endorsementKey": OTHER.ek_b64, "storageRootKey": OTHER.srk_b64},
    )
    assert_dps_error(response, 401, 401002, "endorsement key")
    await nothing_recorded(service_api, "tpm-1")

    # A new challenge replaces the first: its token no longer counts.
    second = await answer_challenge(service_api, "tpm-1", DEVICE)
    stale = await signed(service_api, "tpm-1", DEVICE, first)
    assert_dps_error(stale, 401, 401002, "latest TPM challenge")
    await nothing_recorded(service_api, "tpm-1")
    assert (await signed(service_api, "tpm-1", DEVICE, second)).status_code == 202


async def test_the_key_is_held_until_the_token_expires_then_refused(
    service_api: ServiceApi,
) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll_tpm(service_api, "tpm-1", DEVICE)
    challenges = service_api.runtime.devices.tpm.challenges
    scope = service_api.runtime.id_scope
    await answer_challenge(service_api, "tpm-1", DEVICE)
    expiry = int(time.time()) + 7200
    token = DEVICE.token(scope, "tpm-1", expiry=expiry)
    assert (await signed(service_api, "tpm-1", DEVICE, token)).status_code == 202
    held = await challenges.get("tpm-1")
    assert held is not None
    assert int(held.expires.timestamp()) == expiry

    # Once the key has expired (moved into the past here), the token is refused.
    await challenges.put(replace(held, expires=held.expires - timedelta(hours=3)))
    response = await signed(service_api, "tpm-1", DEVICE, token)
    assert_dps_error(response, 401, 401002, "No TPM challenge of this device is pending")
