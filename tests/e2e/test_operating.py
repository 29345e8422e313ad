"""``dpsd serve`` as an operator runs it: Prometheus metrics on their own listener
(``--metrics-port``) moved by registrations over HTTPS and MQTT, the probes on both HTTP
listeners, and JSON log lines that name the tracking ids clients got."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import sas_token
from tests.e2e.process import DpsdProcess, endpoints_path, run_dpsd, sdk_client, start_dpsd
from tests.integration.test_device_registration_api import KEY
from tests.mqtt_device import BareMqttDevice

pytestmark = pytest.mark.e2e
HUB = "ops-hub.example"
DEVICE_API = "?api-version=2019-03-31"
WAIT = 10.0
POLL_INTERVAL = 0.05
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    base = tmp_path_factory.mktemp("dpsd-ops")
    started = start_dpsd(
        base / "data", base / "serve.log", "--metrics-port", "0", "--log-format", "json"
    )
    added = run_dpsd("hub", "add", HUB, "--data-dir", str(base / "data"))
    assert added.returncode == 0, added.stderr
    client = sdk_client(started.info)
    keys = {"primaryKey": KEY, "secondaryKey": KEY}
    for registration_id in ("ops-https-1", "ops-mqtt-1"):
        client.enrollment.create_or_update(
            id=registration_id,
            enrollment={
                "registrationId": registration_id,
                "attestation": {"type": "symmetricKey", "symmetricKey": keys},
            },
        )
    yield started
    started.stop_cleanly()


def recorded(server: DpsdProcess, name: str) -> str:
    url: str = json.loads(endpoints_path(server.data_dir).read_text())[name]
    return url


def scrape(server: DpsdProcess) -> Samples:
    answer = httpx.get(recorded(server, "metrics"), timeout=WAIT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def trust(server: DpsdProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.info["caCertificatePath"])


def register_over_https(server: DpsdProcess, registration_id: str) -> httpx.Response:
    """Register and poll until assigned (bounded); the register answer."""
    scope, https = server.info["idScope"], server.info["endpoints"]["https"]
    token = sas_token(f"{scope}/registrations/{registration_id}", "registration", KEY)
    base = f"{https}/{scope}/registrations/{registration_id}"
    with httpx.Client(verify=trust(server), timeout=WAIT) as client:
        headers = {"Authorization": token}
        started = client.put(f"{base}/register{DEVICE_API}", headers=headers, json={})
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        deadline = time.monotonic() + WAIT
        while True:
            polled = client.get(f"{base}/operations/{operation}{DEVICE_API}", headers=headers)
            if polled.json()["status"] != "assigning" or time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)  # the device's own poll interval
        assert polled.json()["status"] == "assigned", polled.text
    return started


async def register_over_mqtt(server: DpsdProcess, registration_id: str) -> dict[str, Any]:
    port = int(recorded(server, "mqtt").rsplit(":", 1)[1])
    context = trust(server)
    scope = server.info["idScope"]
    token = sas_token(f"{scope}/registrations/{registration_id}", "registration", KEY)
    device, answer = await BareMqttDevice.connect(port, context, scope, registration_id, token)
    assert answer.return_code == 0
    try:
        _, started = await device.register({"registrationId": registration_id})
        deadline = time.monotonic() + WAIT
        while True:
            _, polled = await device.poll(started["operationId"])
            if polled["status"] != "assigning" or time.monotonic() > deadline:
                return polled
            await asyncio.sleep(POLL_INTERVAL)  # the device's own poll interval
    finally:
        await device.close()


def log_lines(server: DpsdProcess) -> list[dict[str, Any]]:
    """The JSON log lines so far (the banner, on stdout, is text)."""
    lines = server.output().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for_line(server: DpsdProcess, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first log line ``wanted`` accepts, once the server has written it (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        found = [line for line in log_lines(server) if wanted(line)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no such log line:\n{server.output()}"
        time.sleep(POLL_INTERVAL)  # the log is a file: nothing to await


def test_the_metrics_endpoint_is_recorded_and_shown(server: DpsdProcess) -> None:
    url = recorded(server, "metrics")
    assert re.fullmatch(r"http://localhost:\d+/metrics", url), url
    assert f"Metrics endpoint   {url}" in server.output()
    assert httpx.get(url.removesuffix("/metrics") + "/other", timeout=WAIT).status_code == 404
    before = scrape(server)
    assert sample(before, "dpsd_info", version=server.info["version"]) == 1
    assert sample(before, "dpsd_device_connections", protocol="mqtt") == 0
    assert ("process_cpu_seconds_total", frozenset()) in before


def test_registrations_over_https_and_mqtt_move_the_counters(server: DpsdProcess) -> None:
    before = scrape(server)
    register_over_https(server, "ops-https-1")
    assert asyncio.run(register_over_mqtt(server, "ops-mqtt-1"))["status"] == "assigned"
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    for protocol in ("https", "mqtt"):
        outcome = {"protocol": protocol, "attestation": "symmetricKey", "outcome": "assigned"}
        assert moved("dpsd_registrations_total", **outcome) == 1, protocol
        timed = {"protocol": protocol, "outcome": "assigned"}
        assert moved("dpsd_registration_duration_seconds_count", **timed) == 1, protocol
    register = {"api": "dps", "operation": "PUT /{scope}/registrations/{id}/register"}
    assert moved("dpsd_http_requests_total", **register, status="202") == 1
    assert moved("dpsd_http_request_duration_seconds_count", **register) == 1
    assert sample(after, "dpsd_device_connections", protocol="mqtt") == 0
    assert sample(after, "dpsd_store_errors_total") == 0


@pytest.mark.parametrize("listener", ["https", "http"])
def test_the_probes_answer_on_both_listeners(server: DpsdProcess, listener: str) -> None:
    base = server.info["endpoints"][listener]
    for path, body in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
        answer = httpx.get(base + path, verify=trust(server), timeout=WAIT)
        assert (answer.status_code, answer.json()) == (200, body), path


def test_log_lines_are_json_and_name_the_tracking_ids_clients_got(server: DpsdProcess) -> None:
    started = register_over_https(server, "ops-https-1")
    tracking_id = started.headers["x-ms-request-id"]
    access = wait_for_line(
        server,
        lambda line: line["logger"] == "dpsd.access" and line.get("tracking_id") == tracking_id,
    )
    assert (access["status"], access["method"], access["api"]) == (202, "PUT", "dps")
    assigned = wait_for_line(
        server,
        lambda line: line.get("event") == "assigned" and line.get("tracking_id") == tracking_id,
    )
    assert (assigned["hub"], assigned["protocol"]) == (HUB, "https")
    banner = [line for line in server.output().splitlines() if not line.startswith("{")]
    assert banner[0].startswith("dpsd "), banner  # the rest of the output is JSON lines
