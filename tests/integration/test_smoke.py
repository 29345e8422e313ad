from tests.conftest import ServiceApi


async def test_create_then_get(service_api: ServiceApi) -> None:
    body = {"registrationId": "dev-1", "attestation": {"type": "symmetricKey"}}
    created = await service_api.put("/enrollments/dev-1", body)
    assert created.status_code == 200, created.text
    fetched = await service_api.get("/enrollments/dev-1")
    assert fetched.status_code == 200
    assert fetched.json()["attestation"] == {"type": "symmetricKey"}
