"""Throughput and latency of the service API, dpsd side by side with a bare handler.

    .venv/bin/python bench/service_api.py [--duration 10] [--rounds 1] [--connections 16]

Starts ``dpsd serve`` (SQLite store, HTTPS, SAS auth) and then bench/bare_app.py (a bare
ASGI handler on the same uvicorn stack and TLS certificate that only parses, stores in
SQLite and echoes the body), one after the other, and drives each with the same wrk load
on 127.0.0.1:

    PUT create   PUT /enrollments/{fresh id}, no If-Match
    PUT update   PUT /enrollments/{existing id}, If-Match: *
    GET          GET /enrollments/{existing id}

Every body is a valid symmetric-key enrollment about the size of the specification's
MaximumSet example. Before the phases, a pool of ids (--pool) is written to each server; the
update and GET phases cycle through it. Each phase runs --duration seconds after a
--warmup, capped at --max-requests. With --rounds above 1 the servers take turns going
first and the table shows medians. The output is a table of requests/s, p50/p99 latency
and the dpsd/bare ratios against the bar (PUT >= 0.6, GET >= 0.7).

The load comes from wrk (C, one thread by default) so that the client takes little of the
machine's CPU. Install it with ``apt-get install -y wrk`` (Debian/Ubuntu, as root) or
``brew install wrk``.

Exit status: 0 when every request succeeded, 1 when some failed (the figures are then not
worth reading), 2 when wrk is missing or a server did not start.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "enrollments.lua"
BARE_APP = BENCH_DIR / "bare_app.py"
HOST = "127.0.0.1"
SERVICE_HOST = "localhost"  # the name clients use; the token's sr and the Host header
POLICY = "provisioningserviceowner"
API_VERSION = "2021-10-01"
ID_PLACEHOLDER = "@ID@"
POOL_PREFIX = "bench-pool"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PHASES = ("create", "update", "get")
PHASE_TITLES = {"create": "PUT create", "update": "PUT update", "get": "GET"}
BARS = {"create": 0.6, "update": 0.6, "get": 0.7}
SERVERS = ("dpsd", "bare")


class BenchError(Exception):
    """The benchmark cannot run (missing tool, server that does not start)."""


# --- the request body ------------------------------------------------------------------


def _key(label: str) -> str:
    """A valid symmetric key (base64 of 32 bytes), fixed so that runs are comparable."""
    return base64.b64encode(hashlib.sha256(label.encode()).digest()).decode()


def enrollment_template() -> dict[str, Any]:
    """A valid enrollment about as large as the MaximumSet example (~2.5 KB of JSON),
    ``@ID@`` standing for the id (registrationId and deviceId)."""
    metadata = {"lastUpdated": "2025-10-01T17:42:04.760Z", "lastUpdatedVersion": 19}
    return {
        "registrationId": ID_PLACEHOLDER,
        "deviceId": ID_PLACEHOLDER,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": _key("primary"), "secondaryKey": _key("secondary")},
        },
        "capabilities": {"iotEdge": True},
        "iotHubHostName": "bench-hub-1.azure-devices.net",
        "initialTwin": {
            "tags": {
                "version": 9,
                "count": 16,
                "environment": "production",
                "site": {"name": "plant-north-07", "building": "b12", "floor": 3, "room": "3-114"},
                "owner": {"team": "line-automation", "contact": "ops-line@example.com"},
                "metadata": metadata,
                "labels": ["edge", "gateway", "modbus", "opc-ua", "telemetry"],
                "serviceContract": {"id": "SC-2025-0042", "tier": "gold", "expires": "2027-12-31"},
            },
            "properties": {
                "desired": {
                    "version": 9,
                    "count": 16,
                    "telemetryIntervalSeconds": 30,
                    "firmware": {
                        "version": "4.12.3",
                        "url": "https://firmware.example.com/gateway/4.12.3/image.bin",
                        "releaseNotes": "https://firmware.example.com/gateway/4.12.3/notes.html",
                        "sha256": hashlib.sha256(b"firmware 4.12.3").hexdigest(),
                    },
                    "thresholds": {
                        "temperatureCelsius": {"warning": 70.5, "critical": 85.0},
                        "humidityPercent": {"warning": 80, "critical": 95},
                        "vibrationMmPerSecond": {"warning": 7.1, "critical": 11.2},
                        "pressureBar": {"warning": 8.5, "critical": 10.0},
                    },
                    "modules": {
                        "opcPublisher": {"enabled": True, "publishingIntervalMs": 1000},
                        "modbusReader": {"enabled": True, "pollingIntervalMs": 500},
                        "localStorage": {"enabled": False, "retentionDays": 7},
                        "alerting": {"enabled": True, "webhookTimeoutMs": 2500},
                    },
                    "maintenanceWindow": {
                        "timezone": "Europe/Berlin",
                        "days": ["saturday", "sunday"],
                        "start": "02:00",
                        "end": "04:30",
                    },
                    "logging": {"level": "information", "uploadIntervalMinutes": 15},
                    "metadata": metadata,
                }
            },
        },
        "optionalDeviceInformation": {
            "version": 9,
            "count": 16,
            "manufacturer": "Contoso Industrial",
            "model": "EdgeGateway GX-400",
            "serialNumber": "GX400-2025-000731",
            "hardwareRevision": "C2",
            "location": {"latitude": 47.6062, "longitude": -122.3321, "altitudeMeters": 56},
            "network": {"interfaces": ["eth0", "eth1", "wlan0"], "cellular": "LTE-M"},
            "certifications": ["CE", "FCC", "UL 61010-1", "IEC 62443-4-2"],
            "installedOn": "2025-03-14T09:30:00.000Z",
            "metadata": metadata,
        },
        "provisioningStatus": "enabled",
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": True},
        "allocationPolicy": "hashed",
        "iotHubs": ["bench-hub-1.azure-devices.net", "bench-hub-2.azure-devices.net"],
    }


def body_template_text() -> str:
    return json.dumps(enrollment_template(), separators=(",", ":"))


def body_for(template: str, registration_id: str) -> bytes:
    return template.replace(ID_PLACEHOLDER, registration_id).encode()


# --- authentication --------------------------------------------------------------------


def sas_token(host: str, key_name: str, key: str, ttl: int) -> str:
    """A SharedAccessSignature as the SDKs write one (sr URL-encoded, signed as sent)."""
    resource_uri = quote(host, safe="")
    expiry = int(time.time()) + ttl
    digest = hmac.new(
        base64.b64decode(key), f"{resource_uri}\n{expiry}".encode(), hashlib.sha256
    ).digest()
    signature = quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={resource_uri}&sig={signature}&se={expiry}&skn={key_name}"


def shared_access_key(connection_string: str) -> str:
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    return fields["SharedAccessKey"]


# --- server processes ------------------------------------------------------------------


def _environment() -> dict[str, str]:
    """The environment without DPSD_* settings (a DPSD_DATABASE would change the store)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPSD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


@contextlib.contextmanager
def python_path(source: str | None) -> Iterator[None]:
    """dpsd's commands and server run with ``source`` first on PYTHONPATH (None: as is)."""
    saved = os.environ.get("PYTHONPATH")
    if source is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, saved]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def dpsd_info(data_dir: Path) -> dict[str, Any]:
    """``dpsd info --json``; initialises the data dir (CA, certificate, store, keys)."""
    result = subprocess.run(
        [sys.executable, "-m", "dpsd", "info", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_environment(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"dpsd info failed:\n{result.stdout}{result.stderr}")
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def link_hubs(data_dir: Path, host_names: list[str]) -> None:
    """Link the body's IoT hubs with ``dpsd hub add``, where dpsd has that command
    (enrollments may then only name linked hubs)."""
    base = [sys.executable, "-m", "dpsd", "hub"]
    options: dict[str, Any] = {
        "capture_output": True,
        "text": True,
        "timeout": 60,
        "env": _environment(),
        "stdin": subprocess.DEVNULL,
        "check": False,
    }
    if subprocess.run([*base, "--help"], **options).returncode != 0:
        return
    for host_name in host_names:
        result = subprocess.run([*base, "add", host_name, "--data-dir", str(data_dir)], **options)
        if result.returncode != 0:
            raise BenchError(f"dpsd hub add {host_name} failed:\n{result.stdout}{result.stderr}")


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


def _wait_for_port(
    name: str, process: subprocess.Popen[bytes], ready_file: Path, log_path: Path
) -> int:
    """The port a server recorded in ``ready_file`` once it listens (bounded wait)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            recorded = json.loads(ready_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            recorded = None
        if isinstance(recorded, dict) and recorded.get("pid") == process.pid:
            return int(recorded["port"]) if "port" in recorded else _port_of(recorded["https"])
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
            log = log_path.read_text(errors="replace")
            raise BenchError(f"{name} did not start listening within {START_TIMEOUT}s:\n{log}")
        time.sleep(0.05)  # poll interval


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _spawn(name: str, command: list[str], ready_file: Path, log_path: Path) -> ServerProcess:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_environment(),
        )
    try:
        port = _wait_for_port(name, process, ready_file, log_path)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        raise
    return ServerProcess(name, process, port, log_path)


def start_dpsd(data_dir: Path, logs: Path) -> ServerProcess:
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir)]
    command += ["--host", HOST, "--https-port", "0", "--mqtt-port", "-1", "--amqp-port", "-1"]
    return _spawn("dpsd", command, data_dir / "endpoints.json", logs / "dpsd.log")


def start_bare(data_dir: Path, work: Path, logs: Path) -> ServerProcess:
    ready_file = work / "bare-ready.json"
    command = [
        sys.executable,
        str(BARE_APP),
        "--certfile",
        str(data_dir / "tls" / "server.pem"),
        "--keyfile",
        str(data_dir / "tls" / "server-key.pem"),
        "--database",
        str(work / "bare.db"),
        "--ready-file",
        str(ready_file),
        "--host",
        HOST,
    ]
    return _spawn("bare", command, ready_file, logs / "bare.log")


# --- load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    server: str
    phase: str
    round: int
    requests: int
    seconds: float
    errors: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # cores busy in the server process
    client_cpu: float  # cores busy in wrk
    capped: bool

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Load:
    wrk: str
    token: str
    body_file: Path
    duration: int
    warmup: int
    connections: int
    threads: int
    pool: int
    max_requests: int


def run_wrk(
    load: Load, server: ServerProcess, mode: str, prefix: str, seconds: int
) -> dict[str, Any]:
    limit = max(1, -(-load.max_requests // load.threads))
    command = [
        load.wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"https://{HOST}:{server.port}/",
        "--",
        mode,
        prefix,
        str(load.pool),
        str(limit),
        load.token,
        f"{SERVICE_HOST}:{server.port}",
        str(load.body_file),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            outcome: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            return outcome
    raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def measure(
    load: Load, server: ServerProcess, mode: str, prefix: str, round_number: int
) -> PhaseResult:
    if load.warmup > 0:
        # Fresh ids for a create warm-up; the pool itself for the others.
        warm_prefix = f"{prefix}-warm" if mode == "create" else prefix
        run_wrk(load, server, mode, warm_prefix, load.warmup)
    server_before = server.cpu_seconds()
    client_before = _children_cpu_seconds()
    outcome = run_wrk(load, server, mode, prefix, load.duration)
    client_cpu = _children_cpu_seconds() - client_before
    server_cpu = server.cpu_seconds() - server_before
    seconds = outcome["duration_us"] / 1e6
    latency = outcome["latency_us"]
    return PhaseResult(
        server=server.name,
        phase=mode,
        round=round_number,
        requests=outcome["requests"],
        seconds=seconds,
        errors=sum(outcome["errors"].values()),
        mean_ms=latency["mean"] / 1000,
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        server_cpu=server_cpu / seconds,
        client_cpu=client_cpu / seconds,
        capped=outcome["capped"],
    )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seed(server: ServerProcess, token: str, template: str, pool: int, ca: Path) -> None:
    """Write the pool of ids the update and GET phases use, and check both answers."""
    headers = {
        "Host": f"{SERVICE_HOST}:{server.port}",
        "Authorization": token,
        "Content-Type": "application/json",
        "If-Match": "*",
    }
    params = {"api-version": API_VERSION}
    with httpx.Client(
        base_url=f"https://{HOST}:{server.port}", verify=str(ca), timeout=30
    ) as client:
        for index in range(pool):
            registration_id = f"{POOL_PREFIX}-{index}"
            response = client.put(
                f"/enrollments/{registration_id}",
                params=params,
                headers=headers,
                content=body_for(template, registration_id),
            )
            if response.status_code != 200:
                raise BenchError(
                    f"{server.name}: seeding PUT got {response.status_code}: {response.text}"
                )
        response = client.get(f"/enrollments/{POOL_PREFIX}-0", params=params, headers=headers)
        if response.status_code != 200 or response.json()["registrationId"] != f"{POOL_PREFIX}-0":
            raise BenchError(f"{server.name}: GET got {response.status_code}: {response.text}")


# --- report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    phase: str
    server: str
    rate: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    client_cpu: float
    errors: int
    capped: bool

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU time per request, in milliseconds."""
        return 1000 * self.server_cpu / self.rate if self.rate else 0.0


def summarise(results: list[PhaseResult], phase: str, server: str) -> Summary:
    mine = [result for result in results if result.phase == phase and result.server == server]
    return Summary(
        phase=phase,
        server=server,
        rate=statistics.median(result.rate for result in mine),
        p50_ms=statistics.median(result.p50_ms for result in mine),
        p99_ms=statistics.median(result.p99_ms for result in mine),
        server_cpu=statistics.median(result.server_cpu for result in mine),
        client_cpu=statistics.median(result.client_cpu for result in mine),
        errors=sum(result.errors for result in mine),
        capped=any(result.capped for result in mine),
    )


def report(results: list[PhaseResult], phases: list[str], rounds: int) -> list[str]:
    lines = []
    if rounds > 1:
        lines.append("per round (req/s):")
        for phase in phases:
            for server in SERVERS:
                rates = [
                    f"{result.rate:8.0f}"
                    for result in results
                    if result.phase == phase and result.server == server
                ]
                lines.append(f"  {PHASE_TITLES[phase]:<11} {server:<5} {' '.join(rates)}")
        lines.append("")
        lines.append(f"medians of {rounds} rounds:")
    header = (
        f"{'phase':<11} {'server':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU':>8} {'CPU/req':>8} {'wrk CPU':>8} {'errors':>7}"
    )
    lines += [header, "-" * len(header)]
    verdicts = []
    for phase in phases:
        summaries = {server: summarise(results, phase, server) for server in SERVERS}
        for server, summary in summaries.items():
            lines.append(
                f"{PHASE_TITLES[phase]:<11} {server:<6} {summary.rate:8.0f} "
                f"{summary.p50_ms:8.2f} {summary.p99_ms:8.2f} {summary.server_cpu:8.2f} "
                f"{summary.cpu_ms_per_request:8.3f} {summary.client_cpu:8.2f} {summary.errors:7d}"
                + ("  (hit --max-requests)" if summary.capped else "")
            )
        ratio = summaries["dpsd"].rate / summaries["bare"].rate if summaries["bare"].rate else 0
        bar = BARS[phase]
        if any(summary.capped for summary in summaries.values()):
            verdict = "no verdict: a server hit --max-requests, so its rate is understated"
        else:
            verdict = "meets" if ratio >= bar else "BELOW"
        verdicts.append(
            f"{PHASE_TITLES[phase]:<11} dpsd/bare = {ratio:.2f}  (bar {bar:.1f}: {verdict})"
        )
    lines += ["", "throughput ratio:", *(f"  {verdict}" for verdict in verdicts)]
    return lines


def describe_code() -> str:
    """dpsd's version and, in a git checkout, the commit measured."""
    text = f"dpsd {importlib.metadata.version('dpsd')}"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text} at {commit}" + (" with local changes under src/" if changes else "")


def describe_machine() -> str:
    return (
        f"{os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def write_report(
    path: Path, arguments: argparse.Namespace, results: list[Any], **extra: Any
) -> None:
    """The run as JSON: code, machine, arguments, each result with its rate, and ``extra``."""
    document = {
        "code": describe_code(),
        "machine": describe_machine(),
        "arguments": {
            name: str(value) if isinstance(value, Path) else value
            for name, value in vars(arguments).items()
        },
        **extra,
        "results": [asdict(result) | {"rate": result.rate} for result in results],
    }
    path.write_text(json.dumps(document, indent=2))


# --- main ------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="PUT and GET /enrollments: dpsd against a bare ASGI handler, side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per phase")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each phase")
    parser.add_argument("--rounds", type=int, default=1, help="runs of both servers")
    parser.add_argument("--connections", type=int, default=16, help="open connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--pool", type=int, default=1000, help="ids for update and GET")
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="cap on requests per phase"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated: create, update, get"
    )
    parser.add_argument("--work-dir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    arguments = parser.parse_args(argv)
    phases = [phase.strip() for phase in arguments.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases takes {', '.join(PHASES)}")
    arguments.phases = phases
    if min(arguments.duration, arguments.rounds, arguments.connections, arguments.pool) <= 0:
        parser.error("--duration, --rounds, --connections and --pool must be positive")
    if arguments.warmup < 0 or arguments.max_requests <= 0:
        parser.error("--warmup must not be negative and --max-requests must be positive")
    if arguments.connections < arguments.threads:
        parser.error("wrk needs at least one connection per thread")
    return arguments


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError(
            "wrk is not installed; it generates the load. Install it with\n"
            "  apt-get update && apt-get install -y wrk    (Debian/Ubuntu, as root)\n"
            "  brew install wrk                            (macOS)"
        )
    return wrk


def run(arguments: argparse.Namespace) -> int:
    wrk = require_wrk()
    temporary = arguments.work_dir is None
    if arguments.work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="dpsd-bench-"))
    else:
        work = arguments.work_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    status = 2
    try:
        status = _run_in(work, wrk, arguments)
    finally:
        if temporary and status == 0:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            print(f"kept {work} (server logs in its round-* folders)", file=sys.stderr)
    return status


def _run_in(work: Path, wrk: str, arguments: argparse.Namespace) -> int:
    data_dir = work / "dpsd-data"
    info = dpsd_info(data_dir)
    body = enrollment_template()
    link_hubs(data_dir, sorted({body["iotHubHostName"], *body["iotHubs"]}))
    key = shared_access_key(info["serviceConnectionString"])
    token = sas_token(SERVICE_HOST, POLICY, key, ttl=24 * 3600)
    template = body_template_text()
    body_file = work / "body.json"
    body_file.write_text(template)
    load = Load(
        wrk=wrk,
        token=token,
        body_file=body_file,
        duration=arguments.duration,
        warmup=arguments.warmup,
        connections=arguments.connections,
        threads=arguments.threads,
        pool=arguments.pool,
        max_requests=arguments.max_requests,
    )
    body_size = len(body_for(template, f"{POOL_PREFIX}-0"))
    print(f"code: {describe_code()}")
    print(f"machine: {describe_machine()}")
    print(
        f"load: wrk, {arguments.threads} thread(s), {arguments.connections} connections, "
        f"{arguments.duration:g} s per phase after {arguments.warmup:g} s warm-up, "
        f"{arguments.rounds} round(s); PUT body {body_size} bytes; work dir {work}"
    )
    results: list[PhaseResult] = []
    for round_number in range(1, arguments.rounds + 1):
        order = SERVERS if round_number % 2 else tuple(reversed(SERVERS))
        for name in order:
            results += _bench_server(name, round_number, load, arguments, work, data_dir)
    print()
    print("\n".join(report(results, arguments.phases, arguments.rounds)))
    if arguments.json is not None:
        write_report(arguments.json, arguments, results, bodyBytes=body_size)
    if any(result.errors for result in results):
        print("some requests failed: see the errors column and the server logs", file=sys.stderr)
        return 1
    return 0


def _bench_server(
    name: str,
    round_number: int,
    load: Load,
    arguments: argparse.Namespace,
    work: Path,
    data_dir: Path,
) -> list[PhaseResult]:
    logs = work / f"round-{round_number}"
    logs.mkdir(exist_ok=True)
    server = start_dpsd(data_dir, logs) if name == "dpsd" else start_bare(data_dir, work, logs)
    results = []
    try:
        seed(server, load.token, load.body_file.read_text(), load.pool, data_dir / "tls/ca.pem")
        for phase in arguments.phases:
            prefix = f"bench-r{round_number}" if phase == "create" else POOL_PREFIX
            result = measure(load, server, phase, prefix, round_number)
            print(
                f"  round {round_number} {name:<4} {PHASE_TITLES[phase]:<10} "
                f"{result.rate:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}",
                flush=True,
            )
            results.append(result)
    finally:
        server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        return run(arguments)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
