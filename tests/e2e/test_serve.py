"""``dpsd serve`` and ``dpsd info`` as an operator meets them: ports, TLS, auth, restarts."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient
from websockets.sync.client import connect

from tests.e2e.process import (
    DpsdProcess,
    endpoints_path,
    recorded_endpoints,
    run_dpsd,
    sdk_client,
    start_dpsd_listening,
)

pytestmark = pytest.mark.e2e

API = "?api-version=2021-10-01"
INFO_KEYS = {"version", "idScope", "serviceConnectionString", "caCertificatePath", "endpoints"}
TIMEOUT = httpx.Timeout(10.0)


def connection_string_parts(connection_string: str) -> dict[str, str]:
    parts = (part.split("=", 1) for part in connection_string.split(";") if part)
    return dict(parts)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def symmetric_key_enrollment(registration_id: str) -> dict[str, Any]:
    return {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}}


@pytest.fixture(scope="module")
def ca_context(dpsd_info: dict[str, Any]) -> ssl.SSLContext:
    """Trusts the dpsd CA only; checks the host name (the default)."""
    return ssl.create_default_context(cafile=dpsd_info["caCertificatePath"])


@pytest.fixture(scope="module")
def sdk(dpsd_info: dict[str, Any]) -> Iterator[DeviceProvisioningClient]:
    client = sdk_client(dpsd_info)
    with client:
        yield client


def test_info_json_has_exactly_the_documented_keys(
    dpsd_info: dict[str, Any], dpsd_server: DpsdProcess
) -> None:
    assert set(dpsd_info) == INFO_KEYS
    endpoints = dpsd_info["endpoints"]
    assert set(endpoints) == {"https", "http"}
    assert re.fullmatch(r"https://localhost:\d+", endpoints["https"]), endpoints
    assert re.fullmatch(r"http://localhost:\d+", endpoints["http"]), endpoints
    https_port, http_port = port_of(endpoints["https"]), port_of(endpoints["http"])
    assert 0 < https_port != http_port > 0
    # The ports really bound, as recorded by the running server, not the 0 it was given.
    recorded = json.loads(endpoints_path(dpsd_server.data_dir).read_text())
    assert recorded_endpoints(recorded) == endpoints
    parts = connection_string_parts(dpsd_info["serviceConnectionString"])
    assert parts["HostName"] == f"localhost:{https_port}"
    assert parts["SharedAccessKeyName"] == "provisioningserviceowner"
    assert parts["SharedAccessKey"]


def test_info_is_a_table_for_people_and_json_for_scripts(
    dpsd_info: dict[str, Any], dpsd_server: DpsdProcess
) -> None:
    data = ("--data-dir", str(dpsd_server.data_dir))
    as_json = run_dpsd("info", "-o", "json", *data)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == dpsd_info  # as --json (the older name) gave it
    human = run_dpsd("info", "--show-keys", *data)
    assert human.returncode == 0, human.stderr
    plain = run_dpsd("info", *data).stdout
    assert "SharedAccessKey" not in plain
    assert re.search(r"^connection string +hidden \(it holds a key\): --show-keys$", plain, re.M)
    recorded = json.loads(endpoints_path(dpsd_server.data_dir).read_text())
    expected = {
        "ID scope": dpsd_info["idScope"],
        "connection string": dpsd_info["serviceConnectionString"],
        "CA certificate": dpsd_info["caCertificatePath"],
        "HTTPS endpoint": recorded["https"],
        "HTTP endpoint": recorded["http"],
        "MQTT endpoint": recorded["mqtt"],
        "AMQP endpoint": recorded["amqp"],
        "server": "running",
    }
    for heading, value in expected.items():
        line = rf"^{re.escape(heading)} +{re.escape(value)}$"
        assert re.search(line, human.stdout, re.MULTILINE), (heading, human.stdout)


def test_banner_names_the_endpoints(dpsd_info: dict[str, Any], dpsd_server: DpsdProcess) -> None:
    output = dpsd_server.output()
    assert dpsd_info["endpoints"]["https"] in output
    assert dpsd_info["endpoints"]["http"] in output
    assert dpsd_info["idScope"] in output


def device_endpoint(dpsd_server: DpsdProcess, protocol: str) -> str:
    """The device endpoint (``mqtt``, ``amqp``) that endpoints.json records."""
    url: str = json.loads(endpoints_path(dpsd_server.data_dir).read_text())[protocol]
    return url


def test_device_endpoints_are_recorded_and_shown(dpsd_server: DpsdProcess) -> None:
    output = dpsd_server.output()
    for protocol, scheme in (("mqtt", "mqtts"), ("amqp", "amqps")):
        url = device_endpoint(dpsd_server, protocol)
        assert re.fullmatch(rf"{scheme}://localhost:\d+", url), url
        assert url in output


def test_the_amqp_endpoints_start_sasl(
    dpsd_server: DpsdProcess, dpsd_info: dict[str, Any], ca_context: ssl.SSLContext
) -> None:
    sasl_header = b"AMQP\x03\x01\x00\x00"
    port = port_of(device_endpoint(dpsd_server, "amqp"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ca_context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(sasl_header)
        assert tls.recv(8) == sasl_header
    https = dpsd_info["endpoints"]["https"].replace("https://", "wss://")
    with connect(f"{https}/$iothub/websocket", ssl=ca_context, subprotocols=["AMQPWSB10"]) as ws:
        assert ws.subprotocol == "AMQPWSB10"
        ws.send(sasl_header)
        assert cast(bytes, ws.recv(timeout=10)).startswith(sasl_header)


def test_the_version_is_the_installed_package_s_everywhere(
    dpsd_info: dict[str, Any], dpsd_server: DpsdProcess
) -> None:
    installed = version("dpsd")
    result = run_dpsd("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"dpsd {installed}\n"
    assert dpsd_info["version"] == installed
    assert f"dpsd {installed} is serving" in dpsd_server.output()
    human = run_dpsd("info", "--data-dir", str(dpsd_server.data_dir))
    assert human.returncode == 0, human.stderr
    assert re.search(rf"^version +{re.escape(installed)}$", human.stdout, re.MULTILINE), (
        human.stdout
    )


def test_id_scope_has_the_dps_format(dpsd_info: dict[str, Any]) -> None:
    assert re.fullmatch(r"0ne[0-9A-F]{8}", dpsd_info["idScope"]), dpsd_info["idScope"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_https_certificate_verifies_against_the_dpsd_ca(
    dpsd_info: dict[str, Any], ca_context: ssl.SSLContext, host: str
) -> None:
    ca = Path(dpsd_info["caCertificatePath"])
    assert ca.is_file()
    assert "BEGIN CERTIFICATE" in ca.read_text()
    url = f"https://{host}:{port_of(dpsd_info['endpoints']['https'])}/enrollments/x{API}"
    with httpx.Client(verify=ca_context, timeout=TIMEOUT) as client:
        response = client.get(url)
    assert response.status_code == 401  # TLS verified; the request itself is not signed


def test_https_certificate_is_not_trusted_without_the_ca(dpsd_info: dict[str, Any]) -> None:
    with (
        httpx.Client(verify=ssl.create_default_context(), timeout=TIMEOUT) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(dpsd_info["endpoints"]["https"] + f"/enrollments/x{API}")


def test_https_certificate_covers_localhost(
    dpsd_info: dict[str, Any], ca_context: ssl.SSLContext
) -> None:
    port = port_of(dpsd_info["endpoints"]["https"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ca_context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        certificate = tls.getpeercert()
    assert certificate is not None
    alt_names = cast("tuple[tuple[str, str], ...]", certificate.get("subjectAltName", ()))
    names = {value for kind, value in alt_names if kind == "DNS"}
    assert "localhost" in names


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_request_without_authorization_is_401(
    dpsd_info: dict[str, Any], ca_context: ssl.SSLContext, scheme: str
) -> None:
    with httpx.Client(verify=ca_context, timeout=TIMEOUT) as client:
        response = client.get(dpsd_info["endpoints"][scheme] + f"/enrollments/some-device{API}")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert type(body["errorCode"]) is int
    assert body["errorCode"] == 401002
    assert body.get("message")
    assert response.headers["x-ms-error-code"] == "401002"


def test_request_signed_with_a_wrong_key_is_401(
    dpsd_info: dict[str, Any], ca_context: ssl.SSLContext
) -> None:
    from azure.iot.deviceprovisioning import generate_sas_token

    parts = connection_string_parts(dpsd_info["serviceConnectionString"])
    wrong_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    token = generate_sas_token(parts["HostName"], parts["SharedAccessKeyName"], wrong_key)
    with httpx.Client(verify=ca_context, timeout=TIMEOUT) as client:
        response = client.get(
            dpsd_info["endpoints"]["https"] + f"/enrollments/some-device{API}",
            headers={"Authorization": token},
        )
    assert response.status_code == 401
    assert response.headers["x-ms-error-code"] == str(response.json()["errorCode"])


def test_plain_http_endpoint_serves_the_api(
    dpsd_info: dict[str, Any], sdk: DeviceProvisioningClient
) -> None:
    parts = connection_string_parts(dpsd_info["serviceConnectionString"])
    http_connection_string = (
        f"HostName={dpsd_info['endpoints']['http']};"
        f"SharedAccessKeyName={parts['SharedAccessKeyName']};"
        f"SharedAccessKey={parts['SharedAccessKey']}"
    )
    registration_id = f"http-{uuid.uuid4().hex[:12]}"
    with DeviceProvisioningClient.from_connection_string(http_connection_string) as over_http:
        created = over_http.enrollment.create_or_update(
            registration_id, symmetric_key_enrollment(registration_id)
        )
        assert created["registrationId"] == registration_id
        assert over_http.enrollment.get(registration_id)["etag"] == created["etag"]
    # One store behind both listeners.
    assert sdk.enrollment.get(registration_id)["etag"] == created["etag"]


def test_restart_keeps_identity_and_data(
    tmp_path: Path, launch_dpsd: Callable[[Path], DpsdProcess]
) -> None:
    data_dir = tmp_path / "data"
    first = launch_dpsd(data_dir)
    ca_pem = Path(first.info["caCertificatePath"]).read_bytes()
    registration_id = f"restart-{uuid.uuid4().hex[:12]}"
    with sdk_client(first.info) as client:
        created = client.enrollment.create_or_update(
            registration_id, symmetric_key_enrollment(registration_id)
        )
    first.stop_cleanly(signal.SIGTERM)  # exit code 0, "dpsd stopped.", endpoints.json gone

    # With no server running, info reports the ports it is told, not stale ones.
    result = run_dpsd("info", "--json", "--data-dir", str(data_dir), "--https-port", "9443")
    assert result.returncode == 0, result.stdout + result.stderr
    stopped = json.loads(result.stdout)
    assert stopped["endpoints"] == {"https": "https://localhost:9443", "http": None}
    assert stopped["idScope"] == first.info["idScope"]

    second = launch_dpsd(data_dir)
    assert second.info["idScope"] == first.info["idScope"]
    assert second.info["caCertificatePath"] == first.info["caCertificatePath"]
    assert Path(second.info["caCertificatePath"]).read_bytes() == ca_pem
    before = connection_string_parts(first.info["serviceConnectionString"])
    after = connection_string_parts(second.info["serviceConnectionString"])
    # Only the port in HostName may differ: both runs bound port 0.
    assert after["HostName"] == f"localhost:{port_of(second.info['endpoints']['https'])}"
    assert {**before, "HostName": ""} == {**after, "HostName": ""}
    with sdk_client(second.info) as client:
        assert client.enrollment.get(registration_id)["etag"] == created["etag"]
    second.stop_cleanly(signal.SIGINT)


@pytest.mark.parametrize(
    "args",
    [["--https-port", "70000"], ["--https-port", "0", "--http-port", "70000"]],
    ids=["https", "http"],
)
def test_serve_rejects_a_port_out_of_range(tmp_path: Path, args: list[str]) -> None:
    result = run_dpsd("serve", "--data-dir", str(tmp_path / "data"), *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "70000" in output
    assert "65535" in output
    assert "Traceback" not in output
    assert not endpoints_path(tmp_path / "data").exists()


@pytest.mark.parametrize("listener", ["https", "http"])
def test_serve_reports_a_port_in_use(tmp_path: Path, listener: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        https_port, http_port = (port, "0") if listener == "https" else ("0", port)
        result = run_dpsd(
            "serve",
            *("--data-dir", str(tmp_path / "data")),
            *("--https-port", https_port, "--http-port", http_port),
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "in use" in output, output
    # A clear error, not a crash (server.serve means to exit with "dpsd could not listen
    # on ...: is the port in use?").
    assert "Traceback" not in output, f"dpsd crashed instead of reporting the error:\n{output}"
    assert not endpoints_path(tmp_path / "data").exists()


PRIVATE_LOOPBACK = "127.0.0.110"  # localhost does not reach it


def test_a_host_localhost_does_not_reach_is_named_in_the_connection_string(
    tmp_path: Path,
) -> None:
    """Without --hostname the connection string, endpoints and certificate name the address
    dpsd listens on, and every client (the SDK, dpsd's own commands) reaches it so."""
    data_dir = tmp_path / "data"
    server = start_dpsd_listening(
        data_dir,
        tmp_path / "serve.log",
        ["--host", PRIVATE_LOOPBACK, "--https-port", "0", "--mqtt-port", "-1", "--amqp-port", "-1"],
        ["--host", PRIVATE_LOOPBACK],
    )
    try:
        connection = server.info["serviceConnectionString"]
        assert connection.startswith(f"HostName={PRIVATE_LOOPBACK}:"), connection
        assert urlsplit(server.info["endpoints"]["https"]).hostname == PRIVATE_LOOPBACK
        assert "localhost does not reach" not in server.output()
        device = f"named-{uuid.uuid4().hex[:8]}"
        created = sdk_client(server.info).enrollment.create_or_update(
            id=device,
            enrollment={"registrationId": device, "attestation": {"type": "symmetricKey"}},
        )
        assert created["registrationId"] == device
        listed = run_dpsd("enrollment", "list", "-o", "json", "--data-dir", str(data_dir))
        assert listed.returncode == 0, listed.stderr
        assert device in [record["registrationId"] for record in json.loads(listed.stdout)]
    finally:
        server.stop_cleanly(signal.SIGTERM)
