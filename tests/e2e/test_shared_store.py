"""Two dpsd processes on one PostgreSQL store serve as one DPS: same ID scope and keys,
each sees what the other wrote, and a device can register on one and poll the other."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.conftest import sas_token
from tests.e2e.process import run_dpsd, start_dpsd

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
KEY = base64.b64encode(b"k" * 32).decode()


def owner_key(connection_string: str) -> str:
    return dict(part.split("=", 1) for part in connection_string.split(";"))["SharedAccessKey"]


def test_two_instances_share_one_store(postgres_server: str, tmp_path: Path) -> None:
    first = start_dpsd(tmp_path / "a", tmp_path / "a.log", "--database", postgres_server)
    second = start_dpsd(tmp_path / "b", tmp_path / "b.log", "--database", postgres_server)
    try:
        assert first.info["idScope"] == second.info["idScope"]
        key = owner_key(first.info["serviceConnectionString"])
        assert key == owner_key(second.info["serviceConnectionString"])
        linked = run_dpsd(
            "hub",
            "add",
            "shared-hub.example",
            "--data-dir",
            str(tmp_path / "a"),
            "--database",
            postgres_server,
        )
        assert linked.returncode == 0, linked.stderr
        service = {"Authorization": sas_token("localhost", "provisioningserviceowner", key)}
        a = httpx.Client(base_url=first.info["endpoints"]["http"], headers=service)
        b = httpx.Client(base_url=second.info["endpoints"]["http"], headers=service)
        body = {
            "registrationId": "shared-1",
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY},
            },
        }
        assert a.put("/enrollments/shared-1?api-version=2021-10-01", json=body).status_code == 200
        assert b.get("/enrollments/shared-1?api-version=2021-10-01").status_code == 200

        scope = first.info["idScope"]
        device = {
            "Authorization": sas_token(f"{scope}/registrations/shared-1", "registration", KEY)
        }
        started = a.put(
            f"/{scope}/registrations/shared-1/register?api-version=2019-03-31",
            json={},
            headers=device,
        )
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        polled = b.get(
            f"/{scope}/registrations/shared-1/operations/{operation}?api-version=2019-03-31",
            headers=device,
        )
        assert polled.status_code == 200, polled.text
        assert polled.json()["registrationState"]["assignedHub"] == "shared-hub.example"
        assert (
            b.get("/registrations/shared-1?api-version=2021-10-01").json()["status"] == "assigned"
        )
        a.close()
        b.close()
    finally:
        first.stop_cleanly()
        second.stop_cleanly()
