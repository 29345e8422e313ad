"""Whatever a client sends, the service answers with a DPS error, never a 500, and a
refused request writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpsd.app import build_runtime
from dpsd.settings import Settings
from tests.conftest import API, sas_token

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
attestation_types = st.sampled_from(["none", "tpm", "x509", "symmetricKey", "TPM", ""]) | st.text()
attestations = st.fixed_dictionaries(
    {"type": attestation_types},
    optional={
        "tpm": st.fixed_dictionaries({}, optional={"endorsementKey": json_values}),
        "x509": st.dictionaries(
            st.sampled_from(["clientCertificates", "signingCertificates", "caReferences"]),
            json_values,
        ),
        "symmetricKey": st.fixed_dictionaries(
            {}, optional={"primaryKey": json_values, "secondaryKey": json_values}
        ),
    },
)
enrollment_bodies = st.fixed_dictionaries(
    {"registrationId": st.sampled_from(["fuzz-1", "FUZZ-1"]) | st.text(max_size=140)},
    optional={
        "attestation": attestations | json_values,
        "capabilities": json_values,
        "provisioningStatus": st.sampled_from(["enabled", "disabled"]) | json_values,
        "reprovisionPolicy": json_values,
        "allocationPolicy": st.sampled_from(["hashed", "static", "custom", "geoLatency"])
        | json_values,
        "iotHubs": json_values,
        "customAllocationDefinition": json_values,
        "initialTwin": json_values,
        "deviceId": json_values,
        "etag": json_values,
    },
)


class Target:
    def __init__(
        self, portal: anyio.from_thread.BlockingPortal, client: httpx.AsyncClient, key: str
    ) -> None:
        self.portal = portal
        self.client = client
        self.key = key

    def auth(self) -> dict[str, str]:
        return {"Authorization": sas_token("localhost", "provisioningserviceowner", self.key)}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.portal.call(
            lambda: self.client.request(method, path, **kwargs)
        )
        return response


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    with anyio.from_thread.start_blocking_portal() as portal:
        runtime = portal.wrap_async_context_manager(build_runtime(Settings(data_dir=data_dir)))
        with runtime as ready:
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=ready.asgi_app), base_url="https://localhost"
            )
            key = ready.policies["provisioningserviceowner"].primary_key
            yield Target(portal, client, key)
            portal.call(client.aclose)


def assert_dps_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    assert isinstance(body["errorCode"], int)
    assert body["errorCode"] // 1000 == response.status_code


@FUZZ
@given(body=enrollment_bodies | json_values)
def test_put_never_fails_and_refusals_write_nothing(target: Target, body: object) -> None:
    response = target.request("PUT", "/enrollments/fuzz-1" + API, json=body, headers=target.auth())
    if response.status_code == 200:
        assert (
            target.request("DELETE", "/enrollments/fuzz-1" + API, headers=target.auth()).status_code
            == 204
        )
        return
    assert_dps_error(response)
    listed = target.request(
        "POST", "/enrollments/query" + API, json={"query": "SELECT *"}, headers=target.auth()
    )
    assert listed.json() == []


@FUZZ
@given(raw=st.binary(max_size=300))
def test_raw_bytes_get_a_dps_error(target: Target, raw: bytes) -> None:
    headers = {**target.auth(), "Content-Type": "application/json"}
    for path in ("/enrollments/fuzz-1", "/enrollments/query", "/enrollments"):
        method = "PUT" if path.endswith("fuzz-1") else "POST"
        response = target.request(method, path + API, content=raw, headers=headers)
        if response.status_code != 200:
            assert_dps_error(response)


@FUZZ
@given(segments=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4))
def test_any_path_gets_a_dps_answer(target: Target, segments: list[str]) -> None:
    from urllib.parse import quote

    path = "/" + "/".join(quote(segment, safe="") for segment in segments)
    for method in ("GET", "POST", "DELETE"):
        response = target.request(method, path + API, headers=target.auth())
        if response.status_code not in (200, 204):
            assert_dps_error(response)


@FUZZ
@given(header=st.text(max_size=200))
def test_forged_tokens_are_refused(target: Target, header: str) -> None:
    try:
        response = target.request(
            "GET", "/enrollments/fuzz-1" + API, headers={"Authorization": header}
        )
    except (UnicodeEncodeError, httpx.LocalProtocolError):
        return  # not a header a client could send
    assert response.status_code == 401
    assert_dps_error(response)


@FUZZ
@given(
    query=st.text(max_size=120)
    | st.sampled_from(
        ["SELECT * WHERE deviceId = ", "SELECT * WHERE (", "SELECT * WHERE a.b.c = 'x'"]
    )
)
def test_any_query_text_gets_a_dps_answer(target: Target, query: str) -> None:
    response = target.request(
        "POST", "/enrollments/query" + API, json={"query": query}, headers=target.auth()
    )
    if response.status_code != 200:
        assert_dps_error(response)
