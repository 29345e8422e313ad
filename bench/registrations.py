"""Complete device registrations over HTTPS per second, with and without writing the device
into a built-in IoT hub, next to a bare TLS request loop.

    .venv/bin/python bench/registrations.py [--devices 2000] [--concurrency 32] [--rounds 1]

Starts ``dpsd serve`` on a fresh data dir (SQLite store, HTTPS on 127.0.0.1, port 0,
``--retry-after 1``) with two linked IoT hubs: one that only records assignments
(``dpsd hub add``) and one that dpsd serves itself (``dpsd hub add --builtin``). Through the
service API it creates two symmetric-key enrollment groups of the same shape (static
allocation, the same ``initialTwin`` with tags and desired properties), each with a known key
of its own: one assigns its devices to the record-only hub, the other to the built-in hub.
Then client processes (--clients, asyncio, HTTP/1.1; --client raw: hand-written HTTP over
asyncio TLS streams, the default and the cheapest client; --client httpx: a new
httpx.AsyncClient per device) drive up to three phases (--phases) against that server:

    registrations  each simulated device of the record-only group opens a new TLS
                   connection, sends PUT /{idScope}/registrations/{id}/register (202,
                   assigning), polls GET .../operations/{operationId} on the same
                   connection, checks that the status is "assigned" to the record-only hub,
                   and closes the connection.
    hub            the same for a device of the built-in hub's group: before it reports
                   "assigned", dpsd writes the device (identity, then initial twin) into the
                   built-in hub through its IoT Hub REST client (in process).
    bare TLS       the same client opens a new TLS connection, sends
                   GET /?api-version=2021-10-01 (dpsd answers 404 JSON without touching
                   the store), checks the 404, and closes the connection.

Every device has its own registration id and signs with the key derived from its group's
key. The poll does not wait for the retry-after: the operation of a symmetric-key device is
assigned by the time register answers (dpsd waits up to 2 s for the assignment before it
answers; should the operation still be assigning, the client waits --retry-after seconds and
polls again, at most --max-polls polls in all, and counts the extra polls), and the benchmark
measures the server's capacity, not a device's pace (a real device would wait the retry-after
first).

After each hub phase (outside the timed window) the benchmark checks that the devices landed:
it counts the built-in hub's devices (POST /devices/query, SELECT COUNT() AS n FROM devices,
with a SAS of the hub's iothubowner policy) against the registrations that completed, and
reads a sample of the phase's devices back (GET /devices/{id}: the key derived from the group
key; GET /twins/{id}: the group's initial twin).

Each phase handles --devices requests (registrations or bare requests) with --concurrency
in flight, split over the client processes, and stops early after --timeout seconds. The
output gives per phase the rate, p50/p99 latency of one complete registration (or bare
request), server CPU (from /proc) and client CPU, the ratio registrations / bare requests,
and the ratio built-in hub registrations / recorded-only registrations with the server CPU
per registration of each.

Exit status: 0 when every registration was assigned, every bare request got its 404 and the
devices were found in the built-in hub; 1 when some failed, a phase hit --timeout or the
landing check failed; 2 when the server did not start or the set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import resource
import selectors
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from service_api import (
    HOST,
    POLICY,
    SERVICE_HOST,
    BenchError,
    ServerProcess,
    _environment,
    _spawn,
    describe_code,
    describe_machine,
    dpsd_info,
    link_hubs,
    sas_token,
    shared_access_key,
    write_report,
)

DEVICE_API_VERSION = "2019-03-31"
SERVICE_API_VERSION = "2021-10-01"
HUB = "bench-hub-1.azure-devices.net"  # records assignments only
BUILTIN_HUB = "bench-builtin-hub.dpsd.test"  # served by dpsd itself
GROUP_ID = "bench-fleet"
GROUP_KEY = base64.b64encode(hashlib.sha512(b"bench group key").digest()).decode()
HUB_GROUP_ID = "bench-fleet-builtin"
HUB_GROUP_KEY = base64.b64encode(hashlib.sha512(b"bench builtin hub group key").digest()).decode()
HUB_OWNER_POLICY = "iothubowner"
PHASES = ("registrations", "hub", "bare")
PHASE_TITLES = {"registrations": "registration", "hub": "built-in hub", "bare": "bare TLS"}
# What each group of devices is: its enrollment group, its key, the hub it is assigned to.
FLEETS = {
    "registrations": (GROUP_ID, GROUP_KEY, HUB),
    "hub": (HUB_GROUP_ID, HUB_GROUP_KEY, BUILTIN_HUB),
}
# Both groups carry it (so both phases read groups of the same size); only the built-in
# hub's devices get it written into their twin.
INITIAL_TWIN: dict[str, Any] = {
    "tags": {
        "environment": "production",
        "site": {"name": "plant-north-07", "building": "b12", "floor": 3},
        "owner": {"team": "line-automation"},
        "labels": ["edge", "modbus", "telemetry"],
    },
    "properties": {
        "desired": {
            "telemetryIntervalSeconds": 30,
            "firmware": {"version": "4.12.3", "channel": "stable"},
            "thresholds": {"temperatureCelsius": {"warning": 70.5, "critical": 85.0}},
            "logging": {"level": "information"},
        }
    },
}
WORKER_READY_TIMEOUT = 60.0
ERROR_SAMPLES = 5
LANDED_SAMPLES = 8  # registration ids per client process read back from the built-in hub
CHECK_TIMEOUT = 30.0  # seconds per request of the landing check


# --- the client (runs in each worker process) -------------------------------------------


def device_key(registration_id: str, group_key: str = GROUP_KEY) -> str:
    """The key a device of the group signs with (as ``az iot dps compute-device-key``)."""
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def device_token(id_scope: str, registration_id: str, key: str, ttl: int = 3600) -> str:
    """A device's SharedAccessSignature: sr URL-encoded and signed as sent, skn=registration."""
    resource_uri = quote(f"{id_scope}/registrations/{registration_id}", safe="")
    expiry = int(time.time()) + ttl
    digest = hmac.new(
        base64.b64decode(key), f"{resource_uri}\n{expiry}".encode(), hashlib.sha256
    ).digest()
    signature = quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={resource_uri}&sig={signature}&se={expiry}&skn=registration"


@dataclass(frozen=True)
class WorkerPlan:
    phase: str
    client: str
    host: str
    port: int
    ca: str
    id_scope: str
    prefix: str
    count: int
    concurrency: int
    timeout: float
    group_key: str = GROUP_KEY
    hub: str = HUB
    max_polls: int = 5
    retry_after: float = 1.0


class Failure(Exception):
    """One registration or bare request did not end as it should."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


class Connection(Protocol):
    """One TLS connection of a simulated device (HTTP/1.1, kept alive until closed)."""

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: Any = None
    ) -> Answer: ...

    async def close(self) -> None: ...


class HttpxConnection:
    """httpx: a new AsyncClient (so a new connection) per device, sharing the SSL context."""

    def __init__(self, plan: WorkerPlan, context: ssl.SSLContext) -> None:
        self._client = httpx.AsyncClient(
            base_url=f"https://{plan.host}:{plan.port}", verify=context, timeout=30.0
        )

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: Any = None
    ) -> Answer:
        response = await self._client.request(
            method, target, headers=headers, json=body if body is not None else None
        )
        return Answer(response.status_code, response.json() if response.content else None)

    async def close(self) -> None:
        await self._client.aclose()


class RawConnection:
    """asyncio streams over TLS with hand-written HTTP/1.1: what the client costs at least."""

    def __init__(self, plan: WorkerPlan, context: ssl.SSLContext) -> None:
        self._plan = plan
        self._context = context
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: Any = None
    ) -> Answer:
        if self._streams is None:
            self._streams = await asyncio.open_connection(
                self._plan.host, self._plan.port, ssl=self._context
            )
        reader, writer = self._streams
        content = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._plan.host}:{self._plan.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(content)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + content)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        return Answer(int(status_line.split()[1]), json.loads(payload) if payload else None)

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


CONNECTIONS: dict[str, type[HttpxConnection] | type[RawConnection]] = {
    "httpx": HttpxConnection,
    "raw": RawConnection,
}


async def register_device(connection: Connection, plan: WorkerPlan, registration_id: str) -> int:
    """Register, poll (no wait: the operation is already assigned), check that the device is
    assigned to the plan's hub; the number of polls beyond the first."""
    key = device_key(registration_id, plan.group_key)
    headers = {"Authorization": device_token(plan.id_scope, registration_id, key)}
    base = f"/{plan.id_scope}/registrations/{registration_id}"
    query = f"?api-version={DEVICE_API_VERSION}"
    started = await connection.request(
        "PUT", f"{base}/register{query}", headers, {"registrationId": registration_id}
    )
    if started.status != 202 or started.body.get("status") != "assigning":
        raise Failure(f"register {registration_id}: {started.status} {started.body}")
    operation_id = started.body["operationId"]
    for poll in range(plan.max_polls):
        if poll:
            await asyncio.sleep(plan.retry_after)  # as a device would, before polling again
        polled = await connection.request(
            "GET", f"{base}/operations/{operation_id}{query}", headers
        )
        if polled.status != 200 or polled.body.get("status") not in ("assigning", "assigned"):
            break
        if polled.body["status"] == "assigned":
            hub = polled.body.get("registrationState", {}).get("assignedHub")
            if hub != plan.hub:
                raise Failure(f"poll {registration_id}: assigned to {hub}, not {plan.hub}")
            return poll
    raise Failure(f"poll {registration_id}: {polled.status} {polled.body}")


async def bare_request(connection: Connection) -> None:
    answer = await connection.request("GET", f"/?api-version={SERVICE_API_VERSION}", {})
    if answer.status != 404:
        raise Failure(f"bare GET /: {answer.status} {answer.body}")


async def run_plan(plan: WorkerPlan) -> dict[str, Any]:
    """Run --count operations, --concurrency at a time, each on a TLS connection of its own."""
    context = ssl.create_default_context(cafile=plan.ca)
    open_connection = CONNECTIONS[plan.client]
    latencies: list[float] = []
    errors: list[str] = []
    registered: list[str] = []
    failed = 0
    extra_polls = 0
    next_index = 0
    deadline = time.monotonic() + plan.timeout

    async def one(index: int) -> None:
        nonlocal failed, extra_polls
        began = time.perf_counter()
        # A new connection per device: TCP and a full TLS handshake (no session
        # resumption); HTTP/1.1 keep-alive between register and poll only.
        connection = open_connection(plan, context)
        registration_id = f"{plan.prefix}-{index}"
        try:
            async with asyncio.timeout(30):
                if plan.phase == "bare":
                    await bare_request(connection)
                else:
                    extra_polls += await register_device(connection, plan, registration_id)
                    registered.append(registration_id)
                await connection.close()
        except (Failure, httpx.HTTPError, OSError, ValueError, KeyError, TimeoutError) as error:
            failed += 1
            if len(errors) < ERROR_SAMPLES:
                errors.append(f"{type(error).__name__}: {error}")
            with contextlib.suppress(Exception):
                await connection.close()
            return
        latencies.append(time.perf_counter() - began)

    async def lane() -> None:
        nonlocal next_index
        while next_index < plan.count and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            await one(index)

    cpu_before = _own_cpu_seconds()
    start = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(plan.concurrency)))
    end = time.monotonic()
    return {
        "start": start,
        "end": end,
        "latencies": latencies,
        "failed": failed,
        "errors": errors,
        "timed_out": next_index < plan.count,
        "cpu": _own_cpu_seconds() - cpu_before,
        "extra_polls": extra_polls,
        "sample": random.sample(registered, min(LANDED_SAMPLES, len(registered))),
    }


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (all cores, Linux /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_main(plan_text: str) -> int:
    """A client process: get ready, wait for ``go`` on stdin, run, print the outcome."""
    plan = WorkerPlan(**json.loads(plan_text))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    outcome = asyncio.run(run_plan(plan))
    print(json.dumps(outcome), flush=True)
    return 0


# --- the parent: server, set-up, phases ------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    round: int
    completed: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_seconds: float
    client_cpu_seconds: float
    machine_cpu_seconds: float
    timed_out: bool
    extra_polls: int = 0
    in_hub: int | None = None  # devices the built-in hub counted after the phase

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def server_ms_per_op(self) -> float:
        return 1000 * self.server_cpu_seconds / self.completed if self.completed else 0.0

    @property
    def client_ms_per_op(self) -> float:
        return 1000 * self.client_cpu_seconds / self.completed if self.completed else 0.0

    @property
    def server_cores(self) -> float:
        return self.server_cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def client_cores(self) -> float:
        return self.client_cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def other_cores(self) -> float:
        """Cores busy outside the server and the clients (other processes, the kernel)."""
        other = self.machine_cpu_seconds - self.server_cpu_seconds - self.client_cpu_seconds
        return max(0.0, other) / self.seconds if self.seconds else 0.0


def start_dpsd(data_dir: Path, logs: Path, retry_after: int) -> ServerProcess:
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir)]
    command += ["--host", HOST, "--https-port", "0", "--retry-after", str(retry_after)]
    command += ["--mqtt-port", "-1", "--amqp-port", "-1"]  # HTTPS only: no fixed ports taken
    return _spawn("dpsd", command, data_dir / "endpoints.json", logs / "dpsd.log")


def create_group(
    server: ServerProcess,
    key: str,
    ca: Path,
    group: tuple[str, str, str] | None = None,
    initial_twin: dict[str, Any] | None = None,
) -> None:
    """A symmetric-key enrollment group: ``group`` (id, key, hub; default the record-only
    fleet's) with static allocation to its hub and ``initial_twin``; without ``group``, the
    record-only fleet's group with hashed allocation (what bench/mqtt.py uses)."""
    token = sas_token(SERVICE_HOST, POLICY, key, ttl=24 * 3600)
    group_id, group_key, hub = group or FLEETS["registrations"]
    body: dict[str, Any] = {
        "enrollmentGroupId": group_id,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key},
        },
        "iotHubs": [hub],
        "allocationPolicy": "hashed" if group is None else "static",
    }
    if initial_twin is not None:
        body["initialTwin"] = initial_twin
    response = httpx.put(
        f"https://{HOST}:{server.port}/enrollmentGroups/{group_id}",
        params={"api-version": SERVICE_API_VERSION},
        headers={"Authorization": token, "Host": f"{SERVICE_HOST}:{server.port}"},
        json=body,
        verify=str(ca),
        timeout=30,
    )
    if response.status_code != 200:
        raise BenchError(
            f"creating the enrollment group got {response.status_code}: {response.text}"
        )


def link_builtin_hub(data_dir: Path, host_name: str) -> str:
    """``dpsd hub add --builtin``; the key of the hub's owner policy (from
    ``dpsd hub connection-string``)."""
    base = [sys.executable, "-m", "dpsd", "hub"]
    for command in (
        [*base, "add", host_name, "--builtin", "--data-dir", str(data_dir)],
        [*base, "connection-string", host_name, "--data-dir", str(data_dir)],
    ):
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"{' '.join(command[2:5])} failed:\n{result.stdout}{result.stderr}")
    fields = shared_access_fields(result.stdout.strip())
    if fields.get("SharedAccessKeyName") != HUB_OWNER_POLICY:
        raise BenchError(f"unexpected connection string of {host_name}: {result.stdout!r}")
    return fields["SharedAccessKey"]


def shared_access_fields(connection_string: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)


@dataclass(frozen=True)
class Setup:
    server: ServerProcess
    id_scope: str
    ca: Path
    arguments: argparse.Namespace
    hub_key: str = ""  # the built-in hub's owner key


class BuiltinHub:
    """The built-in hub's REST API as a service client reaches it: dpsd's listener, the
    hub's name in Host and TLS SNI, a SAS of its owner policy."""

    def __init__(self, setup: Setup) -> None:
        self._client = httpx.Client(
            base_url=f"https://{HOST}:{setup.server.port}",
            verify=ssl.create_default_context(cafile=str(setup.ca)),
            timeout=CHECK_TIMEOUT,
            headers={
                "Host": BUILTIN_HUB,
                "Authorization": sas_token(BUILTIN_HUB, HUB_OWNER_POLICY, setup.hub_key, 3600),
            },
        )

    def __enter__(self) -> BuiltinHub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        response = self._client.request(
            method,
            path,
            params={"api-version": "2021-04-12"},
            json=body,
            extensions={"sni_hostname": BUILTIN_HUB},
        )
        if response.status_code != 200:
            raise BenchError(
                f"{method} {path} on {BUILTIN_HUB}: {response.status_code} {response.text[:300]}"
            )
        return response.json()

    def count(self) -> int:
        rows = self.request("POST", "/devices/query", {"query": "SELECT COUNT() AS n FROM devices"})
        return int(rows[0]["n"])


def check_landed(setup: Setup, sample: list[str], completed: int, attempted: int) -> int:
    """That the built-in hub holds between ``completed`` and ``attempted`` devices (the hub
    registrations so far), and that the sampled devices are there as their group makes
    them: SAS keys derived from the group key, the group's initial twin. Its device count."""
    wanted_tags = INITIAL_TWIN["tags"]
    wanted_desired = INITIAL_TWIN["properties"]["desired"]
    with BuiltinHub(setup) as hub:
        counted = hub.count()
        if not completed <= counted <= attempted:
            raise BenchError(
                f"{BUILTIN_HUB} holds {counted} devices after {completed} completed hub "
                f"registrations ({attempted} attempted)"
            )
        for registration_id in sample:
            path = quote(registration_id, safe="")
            device = hub.request("GET", f"/devices/{path}")
            key = device_key(registration_id, HUB_GROUP_KEY)
            keys = device.get("authentication", {}).get("symmetricKey", {})
            if device.get("deviceId") != registration_id or keys.get("primaryKey") != key:
                raise BenchError(f"{registration_id} in {BUILTIN_HUB} is not as written: {device}")
            twin = hub.request("GET", f"/twins/{path}")
            desired = twin.get("properties", {}).get("desired", {})
            desired = {name: value for name, value in desired.items() if not name.startswith("$")}
            if twin.get("tags") != wanted_tags or desired != wanted_desired:
                raise BenchError(f"the twin of {registration_id} is not the initial twin: {twin}")
    return counted


@dataclass
class Landing:
    """The landing checks of a run, over the hub registrations so far: completed, and
    attempted (a registration the client gave up on may still have landed)."""

    setup: Setup
    completed: int = 0
    attempted: int = 0
    failed: bool = False

    def check(self, result: PhaseResult, sample: list[str]) -> PhaseResult:
        """``result`` with the hub's device count, after checking that the devices landed;
        a failed check is reported and remembered (``failed``)."""
        self.completed += result.completed
        self.attempted += result.completed + result.failed
        try:
            counted = check_landed(self.setup, sample, self.completed, self.attempted)
        except BenchError as error:
            print(f"    landing check: {error}", file=sys.stderr)
            self.failed = True
            return result
        return replace(result, in_hub=counted)


def _spread(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def run_phase(
    setup: Setup, phase: str, round_number: int, count: int
) -> tuple[PhaseResult, list[str]]:
    """Start the client processes, release them together, collect and merge their outcomes;
    with a sample of the registration ids that completed."""
    arguments = setup.arguments
    clients = min(arguments.clients, count)
    workers: list[subprocess.Popen[str]] = []
    try:
        _, group_key, hub = FLEETS.get(phase, FLEETS["registrations"])
        name = "bench" if phase != "hub" else "bench-hub"
        for index, (share, lanes) in enumerate(
            zip(_spread(count, clients), _spread(arguments.concurrency, clients), strict=True)
        ):
            plan = WorkerPlan(
                phase=phase,
                client=arguments.client,
                host=HOST,
                port=setup.server.port,
                ca=str(setup.ca),
                id_scope=setup.id_scope,
                prefix=f"{name}-r{round_number}-c{index}",
                count=share,
                concurrency=max(1, lanes),
                timeout=arguments.timeout,
                group_key=group_key,
                hub=hub,
                max_polls=arguments.max_polls,
                retry_after=arguments.retry_after,
            )
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", json.dumps(asdict(plan))],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for worker in workers:
            _expect_line(worker, WORKER_READY_TIMEOUT, "ready")
        server_before = setup.server.cpu_seconds()
        machine_before = machine_busy_seconds()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outcomes = [
            json.loads(_expect_line(worker, arguments.timeout + 60, None)) for worker in workers
        ]
        server_cpu = setup.server.cpu_seconds() - server_before
        machine_cpu = machine_busy_seconds() - machine_before
    finally:
        for worker in workers:
            if worker.poll() is None:
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(timeout=10)
    if setup.server.process.poll() is not None:
        raise BenchError(f"dpsd exited during the {phase} phase; see {setup.server.log_path}")
    latencies = sorted(value for outcome in outcomes for value in outcome["latencies"])
    for outcome in outcomes:
        for error in outcome["errors"]:
            print(f"    {phase} error: {error}", file=sys.stderr)
    result = PhaseResult(
        phase=phase,
        round=round_number,
        completed=len(latencies),
        failed=sum(outcome["failed"] for outcome in outcomes),
        seconds=max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes),
        p50_ms=1000 * _percentile(latencies, 0.50),
        p99_ms=1000 * _percentile(latencies, 0.99),
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=sum(outcome["cpu"] for outcome in outcomes),
        machine_cpu_seconds=machine_cpu,
        timed_out=any(outcome["timed_out"] for outcome in outcomes),
        extra_polls=sum(outcome["extra_polls"] for outcome in outcomes),
    )
    return result, [registration_id for o in outcomes for registration_id in o["sample"]]


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(fraction * len(values)))]


def _expect_line(worker: subprocess.Popen[str], timeout: float, expected: str | None) -> str:
    """The worker's next line of output, within ``timeout`` seconds."""
    assert worker.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(worker.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            worker.kill()
            raise BenchError(f"a client process gave no answer within {timeout:g}s")
    line = worker.stdout.readline().strip()
    if not line or (expected is not None and line != expected):
        raise BenchError(f"a client process failed (exit {worker.poll()}): {line!r}")
    return line


# --- report ----------------------------------------------------------------------------


def report(results: list[PhaseResult], rounds: int, bare: str = "bare TLS requests") -> list[str]:
    phases = [phase for phase in PHASES if any(result.phase == phase for result in results)]
    lines = []
    if rounds > 1:
        lines.append("per round (per second):")
        for phase in phases:
            rates = " ".join(f"{r.rate:8.0f}" for r in results if r.phase == phase)
            lines.append(f"  {PHASE_TITLES[phase]:<13} {rates}")
        lines += ["", f"medians of {rounds} rounds:"]
    header = (
        f"{'phase':<13} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU':>8} "
        f"{'srv ms/op':>9} {'cli CPU':>8} {'cli ms/op':>9} {'other':>6} {'failed':>7}"
    )
    lines += [header, "-" * len(header)]
    medians: dict[str, float] = {}
    cpu_per_op: dict[str, float] = {}
    for phase in phases:
        mine = [result for result in results if result.phase == phase]
        medians[phase] = statistics.median(result.rate for result in mine)
        cpu_per_op[phase] = statistics.median(r.server_ms_per_op for r in mine)
        lines.append(
            f"{PHASE_TITLES[phase]:<13} {medians[phase]:7.0f} "
            f"{statistics.median(r.p50_ms for r in mine):8.1f} "
            f"{statistics.median(r.p99_ms for r in mine):8.1f} "
            f"{statistics.median(r.server_cores for r in mine):8.2f} "
            f"{cpu_per_op[phase]:9.2f} "
            f"{statistics.median(r.client_cores for r in mine):8.2f} "
            f"{statistics.median(r.client_ms_per_op for r in mine):9.2f} "
            f"{statistics.median(r.other_cores for r in mine):6.2f} "
            f"{sum(r.failed for r in mine):7d}"
            + ("  (hit --timeout)" if any(r.timed_out for r in mine) else "")
            + (f"  ({extra} extra polls)" if (extra := sum(r.extra_polls for r in mine)) else "")
        )
    lines.append("")
    if "registrations" in medians and "bare" in medians:
        ratio = medians["registrations"] / medians["bare"] if medians["bare"] else 0.0
        lines.append(f"registrations / {bare} = {ratio:.3f}")
    if "registrations" in medians and "hub" in medians:
        recorded, landed = medians["registrations"], medians["hub"]
        ratio = landed / recorded if recorded else 0.0
        hub_cost = cpu_per_op["hub"] - cpu_per_op["registrations"]
        lines += [
            f"built-in hub registrations / recorded-only registrations = {ratio:.3f}",
            f"server CPU per registration: recorded only {cpu_per_op['registrations']:.2f} ms, "
            f"built-in hub {cpu_per_op['hub']:.2f} ms (+{hub_cost:.2f} ms for the hub write)",
        ]
        if rounds > 1:
            by_round = {(r.phase, r.round): r.rate for r in results}
            per_round = [
                by_round[("hub", n)] / by_round[("registrations", n)]
                for n in sorted({r.round for r in results})
                if by_round.get(("registrations", n)) and ("hub", n) in by_round
            ]
            lines.append("  per round: " + " ".join(f"{value:.3f}" for value in per_round))
    counted = [r.in_hub for r in results if r.in_hub is not None]
    if counted:
        lines.append(
            f"landing check passed after every hub phase: {BUILTIN_HUB} counted {counted[-1]} "
            "devices at the end, as many as hub registrations completed; sampled devices read "
            "back with their keys and initial twin"
        )
    return lines


# --- main ------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Complete HTTPS device registrations per second against a bare TLS loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=2000, help="operations per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight, all clients")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--client", choices=sorted(CONNECTIONS), default="raw", help="HTTP client")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every phase")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="which phases to run, comma-separated"
    )
    parser.add_argument("--max-polls", type=int, default=5, help="polls per registration")
    parser.add_argument("--warmup", type=int, default=200, help="operations before round 1")
    parser.add_argument("--timeout", type=float, default=60, help="seconds at most per phase")
    parser.add_argument("--retry-after", type=int, default=1, help="dpsd serve --retry-after")
    parser.add_argument("--work-dir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    arguments = parser.parse_args(argv)
    if min(arguments.devices, arguments.concurrency, arguments.clients, arguments.rounds) <= 0:
        parser.error("--devices, --concurrency, --clients and --rounds must be positive")
    if arguments.devices > 1_000_000 or arguments.concurrency > 1000 or arguments.clients > 8:
        parser.error("at most 1000000 --devices, 1000 --concurrency and 8 --clients")
    if arguments.warmup < 0 or not 0 < arguments.timeout <= 3600:
        parser.error("--warmup must not be negative and --timeout within (0, 3600]")
    if not 1 <= arguments.max_polls <= 10:
        parser.error("--max-polls must be within [1, 10]")
    phases = [phase.strip() for phase in arguments.phases.split(",") if phase.strip()]
    if not phases or any(phase not in PHASES for phase in phases):
        parser.error(f"--phases takes some of {', '.join(PHASES)}")
    arguments.phases = tuple(phase for phase in PHASES if phase in phases)
    return arguments


def run(arguments: argparse.Namespace) -> int:
    temporary = arguments.work_dir is None
    if arguments.work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="dpsd-bench-reg-"))
    else:
        work = arguments.work_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    status = 2
    try:
        status = _run_in(work, arguments)
    finally:
        if temporary and status == 0:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            print(f"kept {work} (server log in it)", file=sys.stderr)
    return status


def run_rounds(landing: Landing) -> list[PhaseResult]:
    """The warm-up, then every round of the phases, taking turns going first."""
    setup, arguments = landing.setup, landing.setup.arguments
    if arguments.warmup:
        for phase in arguments.phases:
            warm, sample = run_phase(setup, phase, 0, arguments.warmup)
            if phase == "hub":
                landing.check(warm, sample)
    results = []
    for round_number in range(1, arguments.rounds + 1):
        phases = arguments.phases
        for phase in phases if round_number % 2 else tuple(reversed(phases)):
            result, sample = run_phase(setup, phase, round_number, arguments.devices)
            if phase == "hub":
                result = landing.check(result, sample)
            print(
                f"  round {round_number} {PHASE_TITLES[phase]:<13} {result.rate:7.0f}/s  "
                f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
                f"srv {result.server_cores:.2f} cli {result.client_cores:.2f} "
                f"other {result.other_cores:.2f} cores  "
                f"srv {result.server_ms_per_op:.2f} ms/op  failed {result.failed}"
                + (f"  in hub {result.in_hub}" if result.in_hub is not None else ""),
                flush=True,
            )
            results.append(result)
    return results


def _run_in(work: Path, arguments: argparse.Namespace) -> int:
    data_dir = work / "dpsd-data"
    if data_dir.exists():
        raise BenchError(f"{data_dir} exists; the benchmark needs a fresh data dir")
    info = dpsd_info(data_dir)
    link_hubs(data_dir, [HUB])
    hub_key = link_builtin_hub(data_dir, BUILTIN_HUB) if "hub" in arguments.phases else ""
    ca = Path(info["caCertificatePath"])
    client = f"httpx {httpx.__version__}" if arguments.client == "httpx" else "raw streams"
    print(f"code: {describe_code()}")
    print(f"machine: {describe_machine()}")
    print(
        f"load: {arguments.clients} client process(es) (asyncio + {client}, HTTP/1.1), "
        f"{arguments.concurrency} in flight, {arguments.devices} operations per phase, "
        f"phases {', '.join(arguments.phases)}, "
        f"{arguments.rounds} round(s), {arguments.warmup} warm-up operations; "
        f"work dir {work}",
        flush=True,
    )
    server = start_dpsd(data_dir, work, arguments.retry_after)
    results: list[PhaseResult] = []
    landing_failed = False
    try:
        service_key = shared_access_key(info["serviceConnectionString"])
        for fleet in ("registrations", "hub"):
            if fleet in arguments.phases:
                create_group(server, service_key, ca, FLEETS[fleet], INITIAL_TWIN)
        landing = Landing(Setup(server, info["idScope"], ca, arguments, hub_key))
        results = run_rounds(landing)
        landing_failed = landing.failed
    finally:
        server.stop()
    print()
    print("\n".join(report(results, arguments.rounds)))
    if arguments.json is not None:
        write_report(arguments.json, arguments, results)
    if any(result.failed or result.timed_out for result in results):
        print("some operations failed or a phase hit --timeout", file=sys.stderr)
        return 1
    if landing_failed:
        print("devices were missing from the built-in hub or not as written", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return worker_main(argv[1])
    arguments = parse_arguments(argv)
    try:
        return run(arguments)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
