"""``dpsd serve --workers 2`` on SQLite and on PostgreSQL: one supervisor, two worker
processes on the same sockets and store. Requests are sent to one worker on purpose by
stopping the other (SIGSTOP: it cannot accept, so the free one takes every connection),
so a device registers on one worker and polls the other, over HTTPS and over MQTT; a
certificate enrolled through one worker is trusted by the other's TLS handshakes; metrics
are the sum over both; a killed worker is started again and dpsd keeps serving; SIGTERM
stops them all."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpsd.domain.device_auth import derive_device_key
from tests.certs import issue
from tests.conftest import sas_token, scratch_postgres_database
from tests.e2e.node_clients import held_webhook
from tests.e2e.process import DpsdProcess, endpoints_path, run_dpsd, sdk_client, start_dpsd
from tests.e2e.test_x509_devices import provision, write_identity, x509_enrollment
from tests.mqtt_device import BareMqttDevice
from tests.tpm.soft_tpm import SoftTpm

pytestmark = pytest.mark.e2e
DEVICE_API = "?api-version=2019-03-31"
TPM_API = "?api-version=2021-06-01"
GROUP_KEY = base64.b64encode(b"w" * 64).decode()
HUB = "workers-hub.example"
RESTART_TIMEOUT = 30.0
BURST_DEVICES = 160
BURST_IN_FLIGHT = 16
POLL_INTERVAL = 0.05


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DpsdProcess]:
    base = tmp_path_factory.mktemp(f"dpsd-workers-{request.param}")
    store: list[str] = []
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            # a database of its own: the hubs linked here would be offered to other tests'
            # devices on the session's database
            store = ["--database", stack.enter_context(scratch_postgres_database())]
        yield from _serve_with_workers(request.param, base, store)


def _serve_with_workers(backend: str, base: Path, store: list[str]) -> Iterator[DpsdProcess]:
    started = start_dpsd(
        base / "data",
        base / "serve.log",
        "--workers",
        "2",
        "--metrics-port",
        "0",
        "--retry-after",
        "1",
        *store,
    )
    try:
        linked = run_dpsd("hub", "add", HUB, "--data-dir", str(base / "data"), *store)
        assert linked.returncode == 0, linked.stderr
        sdk_client(started.info).enrollment_group.create_or_update(
            id=f"{backend}-fleet",
            enrollment_group={
                "enrollmentGroupId": f"{backend}-fleet",
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {"primaryKey": GROUP_KEY, "secondaryKey": GROUP_KEY},
                },
            },
        )
    except BaseException:
        started.stop()
        raise
    started.info["backend"] = backend
    if store:
        started.info["database"] = store[1]
    yield started
    workers = recorded(started)["workers"]
    started.stop_cleanly()
    for pid in workers:
        assert not alive(pid), f"worker {pid} outlived dpsd"


def recorded(server: DpsdProcess) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(endpoints_path(server.data_dir).read_text())
    return content


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: the supervisor reaps it
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


@contextlib.contextmanager
def only(server: DpsdProcess, number: int) -> Iterator[int]:
    """Every new connection goes to worker ``number`` (1 or 2): the others are stopped
    meanwhile. Yields its pid."""
    workers: list[int] = recorded(server)["workers"]
    others = [pid for index, pid in enumerate(workers, 1) if index != number]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield workers[number - 1]
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def device_id(server: DpsdProcess, name: str) -> str:
    return f"{server.info['backend']}-{name}"


def device_token(server: DpsdProcess, registration_id: str) -> str:
    key = derive_device_key(GROUP_KEY, registration_id)
    scope = server.info["idScope"]
    return sas_token(f"{scope}/registrations/{registration_id}", "registration", key)


def device_request(
    server: DpsdProcess, method: str, registration_id: str, path: str, token: str | None = None
) -> httpx.Response:
    """One request over a new HTTPS connection (so that it goes to a worker accepting now),
    signed with ``token`` (default: the group's derived key)."""
    scope = server.info["idScope"]
    url = f"{server.info['endpoints']['https']}/{scope}/registrations/{registration_id}{path}"
    headers = {"Authorization": token or device_token(server, registration_id)}
    body = {"registrationId": registration_id} if method == "PUT" else None
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    with httpx.Client(verify=context, timeout=10) as client:
        return client.request(method, f"{url}{DEVICE_API}", json=body, headers=headers)


def served_by(server: DpsdProcess, pattern: str) -> set[int]:
    """The workers that logged a line matching ``pattern``."""
    return {
        int(match.group(1))
        for line in server.output().splitlines()
        if re.search(pattern, line)
        for match in [re.search(r" worker=(\d+)", line)]
        if match
    }


def test_the_banner_and_endpoints_name_the_supervisor_and_its_workers(
    server: DpsdProcess,
) -> None:
    content = recorded(server)
    assert content["pid"] == server.process.pid
    workers = content["workers"]
    assert len(set(workers)) == 2
    assert server.process.pid not in workers
    assert all(alive(pid) for pid in workers)
    assert f"Workers            2 processes (pids {workers[0]}, {workers[1]})" in server.output()
    assert re.search(r"dpsd\.supervisor: worker 1 started  pid=\d+", server.output())
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    for number in (1, 2):
        with only(server, number), httpx.Client(verify=context, timeout=10) as client:
            for probe, answer in (("/healthz", "ok"), ("/readyz", "ready")):
                response = client.get(f"{server.info['endpoints']['https']}{probe}")
                assert response.json() == {"status": answer}, (number, probe, response.text)


def test_a_device_registers_on_one_worker_and_polls_the_other_over_https(
    server: DpsdProcess,
) -> None:
    registration_id = device_id(server, "https-1")
    with only(server, 1):
        started = device_request(server, "PUT", registration_id, "/register")
    assert started.status_code == 202, started.text
    operation = started.json()["operationId"]
    with only(server, 2):
        polled = device_request(server, "GET", registration_id, f"/operations/{operation}")
    assert polled.status_code == 200, polled.text
    assert polled.json()["status"] == "assigned"
    assert polled.json()["registrationState"]["assignedHub"] == HUB
    assert served_by(server, rf"PUT /\S+/registrations/{registration_id}/register") == {1}
    assert served_by(server, rf"GET /\S+/registrations/{registration_id}/operations/") == {2}


def test_a_device_registers_on_one_worker_and_polls_the_other_over_mqtt(
    server: DpsdProcess,
) -> None:
    registration_id = device_id(server, "mqtt-1")
    port = int(recorded(server)["mqtt"].rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    token = device_token(server, registration_id)
    scope = server.info["idScope"]

    async def register() -> dict[str, Any]:
        device, _ = await BareMqttDevice.connect(port, context, scope, registration_id, token)
        try:
            topic, body = await device.register({"registrationId": registration_id})
        finally:
            await device.close()
        assert topic.startswith("$dps/registrations/res/202/"), (topic, body)
        return body

    async def poll(operation: str) -> dict[str, Any]:
        device, _ = await BareMqttDevice.connect(port, context, scope, registration_id, token)
        try:
            topic, body = await device.poll(operation)
        finally:
            await device.close()
        assert topic.startswith("$dps/registrations/res/200/"), (topic, body)
        return body

    with only(server, 2):
        started = asyncio.run(register())
    with only(server, 1):
        polled = asyncio.run(poll(started["operationId"]))
    assert polled["status"] == "assigned"
    assert polled["registrationState"]["assignedHub"] == HUB
    assert served_by(server, rf"mqtt device {registration_id} assigned") == {2}
    closed = rf"event=disconnected .*registration_id={registration_id} "
    assert served_by(server, closed) == {1, 2}


def test_workers_writing_at_once_answer_every_device(server: DpsdProcess) -> None:
    """Both workers write the store at the same time (SQLite: one file, one write lock):
    every device is assigned, none meets a store fault."""

    def provision_one(index: int) -> str:
        registration_id = device_id(server, f"burst-{index}")
        started = device_request(server, "PUT", registration_id, "/register")
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        polled = device_request(server, "GET", registration_id, f"/operations/{operation}")
        assert polled.status_code == 200, polled.text
        return str(polled.json()["status"])

    with ThreadPoolExecutor(max_workers=BURST_IN_FLIGHT) as pool:
        statuses = list(pool.map(provision_one, range(BURST_DEVICES)))
    assert statuses == ["assigned"] * BURST_DEVICES
    assert served_by(server, r"PUT /\S+/registrations/\S+-burst-\d+/register") == {1, 2}
    assert "store_unavailable" not in server.output()
    assert "database is locked" not in server.output()


def test_an_assignment_one_worker_finishes_in_the_background_is_polled_on_the_other(
    server: DpsdProcess,
) -> None:
    """A custom allocation runs after register answered: the worker that took the register
    finishes it, and the other worker's polls see it assigning, then assigned."""
    registration_id = device_id(server, "custom-1")
    key = base64.b64encode(b"c" * 32).decode()
    scope = server.info["idScope"]
    token = sas_token(f"{scope}/registrations/{registration_id}", "registration", key)
    with held_webhook(HUB, RESTART_TIMEOUT) as webhook:
        sdk_client(server.info).enrollment.create_or_update(
            id=registration_id,
            enrollment={
                "registrationId": registration_id,
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {"primaryKey": key, "secondaryKey": key},
                },
                "allocationPolicy": "custom",
                "customAllocationDefinition": {
                    "webhookUrl": webhook.url,
                    "apiVersion": "2021-10-01",
                },
            },
        )
        with only(server, 1):
            started = device_request(server, "PUT", registration_id, "/register", token)
        assert started.status_code == 202, started.text
        operation = f"/operations/{started.json()['operationId']}"
        with only(server, 2):
            waiting = device_request(server, "GET", registration_id, operation, token)
        assert waiting.json()["status"] == "assigning", waiting.text
        webhook.release.set()
        deadline = time.monotonic() + RESTART_TIMEOUT
        while True:
            with only(server, 2):
                polled = device_request(server, "GET", registration_id, operation, token)
            if polled.json()["status"] != "assigning":
                break
            assert time.monotonic() < deadline, polled.text
            time.sleep(POLL_INTERVAL)  # worker 1 runs meanwhile: it finishes the assignment
    assert polled.json()["status"] == "assigned", polled.text
    assert polled.json()["registrationState"]["assignedHub"] == HUB
    assert served_by(server, rf"https device {registration_id} assigned") == {1}
    assert served_by(server, rf"GET /\S+/registrations/{registration_id}/operations/") == {2}


def test_a_tpm_challenge_from_one_worker_is_answered_on_the_other(server: DpsdProcess) -> None:
    """The key a TPM device is challenged with lives in the store: the device may prove
    it holds it to another worker than the one that challenged it."""
    device = SoftTpm.make(7 if server.info["backend"] == "sqlite" else 8)
    registration_id = device.registration_id()
    sdk_client(server.info).enrollment.create_or_update(
        id=registration_id,
        enrollment={
            "registrationId": registration_id,
            "attestation": {"type": "tpm", "tpm": {"endorsementKey": device.ek_b64}},
        },
    )
    scope = server.info["idScope"]
    url = f"{server.info['endpoints']['https']}/{scope}/registrations/{registration_id}"
    body = {
        "registrationId": registration_id,
        "tpm": {"endorsementKey": device.ek_b64, "storageRootKey": device.srk_b64},
    }
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    with only(server, 1), httpx.Client(verify=context, timeout=10) as client:
        challenged = client.put(f"{url}/register{TPM_API}", json=body)
    assert challenged.status_code == 401, challenged.text
    device.activate(base64.b64decode(challenged.json()["authenticationKey"]))
    signed = {"Authorization": device.token(scope, registration_id)}
    with only(server, 2), httpx.Client(verify=context, timeout=10, headers=signed) as client:
        started = client.put(f"{url}/register{TPM_API}", json=body)
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        polled = client.get(f"{url}/operations/{operation}{TPM_API}")
    assert polled.json()["status"] == "assigned", polled.text
    assert served_by(server, rf"PUT /\S+/registrations/{registration_id}/register\S* 401") == {1}
    assert served_by(server, rf"PUT /\S+/registrations/{registration_id}/register\S* 202") == {2}


def test_a_certificate_enrolled_through_one_worker_is_trusted_by_the_other(
    server: DpsdProcess, tmp_path: Path
) -> None:
    registration_id = device_id(server, "camera-1")
    certificate = issue(registration_id)
    identity = write_identity(tmp_path, registration_id, [certificate])
    with only(server, 1):
        sdk_client(server.info).enrollment.create_or_update(
            id=registration_id, enrollment=x509_enrollment(registration_id, certificate)
        )
    with only(server, 2):
        result = provision(server.info, identity, registration_id)
    assert result.status_code == 200, result.text
    assert result.json()["status"] == "assigned"
    assert served_by(server, rf"PUT /enrollments/{registration_id}\?") == {1}
    assert served_by(server, rf"PUT /\S+/registrations/{registration_id}/register") == {2}


def registrations_counted(server: DpsdProcess) -> float:
    """HTTPS registrations assigned, as a scrape of the metrics listener says."""
    text = httpx.get(recorded(server)["metrics"], timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dpsd_registrations_total{")
        and 'protocol="https"' in line
        and 'outcome="assigned"' in line
    )


def test_metrics_are_counted_over_every_worker(server: DpsdProcess) -> None:
    with only(server, 1):
        before = registrations_counted(server)
        assert device_request(server, "PUT", device_id(server, "m-1"), "/register").is_success
    with only(server, 2):
        assert device_request(server, "PUT", device_id(server, "m-2"), "/register").is_success
        after = registrations_counted(server)
    assert after - before == 2
    scraped = httpx.get(recorded(server)["metrics"], timeout=10).text
    # one sample summed over the workers (each writes its own count every second)
    in_flight = re.findall(r"^dpsd_registrations_in_flight\S* .*$", scraped, re.MULTILINE)
    assert len(in_flight) == 1, scraped
    assert re.fullmatch(r"dpsd_registrations_in_flight \d+\.0", in_flight[0]), in_flight
    assert "process_cpu_seconds_total" not in scraped


def test_a_killed_worker_is_started_again_and_dpsd_keeps_serving(server: DpsdProcess) -> None:
    workers = recorded(server)["workers"]
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + RESTART_TIMEOUT
    while (now := recorded(server)["workers"])[0] == workers[0]:
        assert time.monotonic() < deadline, server.output()
        time.sleep(POLL_INTERVAL)  # poll interval, not a wait for readiness
    assert now[1] == workers[1]
    assert alive(now[0])
    assert "worker 1 ended (killed by SIGKILL); starting it again" in server.output()
    for number in (1, 2):
        registration_id = device_id(server, f"after-kill-{number}")
        with only(server, number):
            started = device_request(server, "PUT", registration_id, "/register")
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        with only(server, 3 - number):
            polled = device_request(server, "GET", registration_id, f"/operations/{operation}")
        assert polled.json()["status"] == "assigned", polled.text


def test_a_built_in_hub_linked_while_dpsd_runs_is_served_by_every_worker(
    server: DpsdProcess,
) -> None:
    hub = f"{server.info['backend']}-live.hub.example"
    store = ["--database", server.info["database"]] if "database" in server.info else []
    linked = run_dpsd("hub", "add", hub, "--builtin", "--data-dir", str(server.data_dir), *store)
    assert linked.returncode == 0, linked.stderr
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    port = int(recorded(server)["https"].rsplit(":", 1)[1])
    for number in (1, 2):
        with (
            only(server, number),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=hub) as tls,
        ):
            names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
        assert names == [hub], number


def test_sigint_stops_the_supervisor_and_every_worker(tmp_path: Path) -> None:
    started = start_dpsd(tmp_path / "data", tmp_path / "serve.log", "--workers", "2")
    workers = recorded(started)["workers"]
    started.stop_cleanly(signal.SIGINT)
    assert not any(alive(pid) for pid in workers)
    assert started.output().count("stopped  pid=") == 2, started.output()


def test_workers_end_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    started = start_dpsd(tmp_path / "data", tmp_path / "serve.log", "--workers", "2")
    workers = recorded(started)["workers"]
    assert started.stop(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + RESTART_TIMEOUT
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, started.output()
        time.sleep(POLL_INTERVAL)  # poll interval, not a wait for readiness
    info = run_dpsd("info", "--json", "--data-dir", str(tmp_path / "data"))
    assert json.loads(info.stdout)["endpoints"]["https"] == "https://localhost:8443"


def test_a_port_in_use_stops_dpsd_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_dpsd(
            "serve", "--data-dir", str(tmp_path / "data"), "--https-port", str(port),
            "--mqtt-port", "-1", "--amqp-port", "-1", "--workers", "2",
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "worker" not in result.stderr


@pytest.mark.parametrize("value", ["0", "none", "257"])
def test_a_worker_count_that_is_no_count_is_a_usage_error(value: str, tmp_path: Path) -> None:
    result = run_dpsd("serve", "--data-dir", str(tmp_path / "data"), "--workers", value)
    assert result.returncode == 2, result.stderr
    assert "workers" in result.stderr
