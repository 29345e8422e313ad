"""Complete device registrations over MQTT per second, next to a bare TLS accept-and-close
loop, and the memory dpsd holds per idle connected device.

    .venv/bin/python bench/mqtt.py [--devices 2000] [--concurrency 32] [--idle 1000]

Starts ``dpsd serve`` on a fresh data dir (SQLite store, HTTPS and MQTT on 127.0.0.1, both
on port 0, ``--retry-after 1``), links one IoT hub and creates a symmetric-key enrollment
group with a known key through the service API (the helpers of bench/registrations.py).
Then one client process (this one: asyncio TLS streams speaking MQTT 3.1.1 with dpsd's own
sans-I/O codec, ``dpsd.mqtt.codec``) drives three phases against the MQTT port:

    registrations  each simulated device opens a new TLS connection, sends CONNECT (client
                   id = registration id, user name {idScope}/registrations/{id}/api-version=
                   2019-03-31, password = a SAS token signed with the key derived from the
                   group key), SUBSCRIBE $dps/registrations/res/#, publishes register
                   ($rid=1), reads the 202 with the operationId, polls the operation status
                   ($rid=2) at once, checks "assigned", sends DISCONNECT and closes.
    bare TLS       the same client opens a new TLS connection to the same port (full
                   handshake) and closes it: dpsd accepts, reads the end of the stream and
                   closes too. What TLS and the accept loop cost, without MQTT.
    idle           --idle devices connect (TLS, CONNECT, SUBSCRIBE) and stay connected;
                   dpsd's VmRSS (/proc/<pid>/status) is read before and after, and the
                   difference per device reported; a PINGREQ on every connection checks they
                   are all still alive; then they disconnect and VmRSS is read once more.
                   --idle-cycles above 1 repeats this (memory freed by the first cycle and
                   reused by the next shows up as a smaller growth). With --idle-tls-only
                   the idle connections stop after the TLS handshake (no CONNECT), which
                   separates what TLS and asyncio hold from what the MQTT session adds;
                   dpsd closes such connections after its connect timeout (10 s).

The poll does not wait the retry-after: dpsd assigns a symmetric-key device before it
answers the register, so the first poll finds the operation assigned (should it still be
assigning, the client polls again at once, at most --max-polls times, and counts the extra
polls). The benchmark measures the server's capacity, not a device's pace.

Exit status: 0 when every registration was assigned, every bare connection completed and
every idle device stayed connected, 1 when some failed or a phase hit --timeout, 2 when the
server did not start or the set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import registrations
from dpsd.mqtt.codec import (
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    encode,
)
from registrations import (
    ERROR_SAMPLES,
    HUB,
    PhaseResult,
    _percentile,
    create_group,
    device_key,
    device_token,
    machine_busy_seconds,
)
from service_api import (
    HOST,
    BenchError,
    ServerProcess,
    _spawn,
    describe_code,
    describe_machine,
    dpsd_info,
    link_hubs,
    shared_access_key,
)

DEVICE_API_VERSION = "2019-03-31"
RESPONSE_FILTER = "$dps/registrations/res/#"
REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/?$rid={rid}"
POLL_TOPIC = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
RESPONSE_PREFIX = "$dps/registrations/res/"
PHASES = ("registrations", "bare")
PHASE_TITLES = {"registrations": "registration", "bare": "bare TLS"}
KEEP_ALIVE = 300  # seconds; dpsd drops a device after 1.5 keep-alives of silence
OPERATION_TIMEOUT = 30.0  # seconds for one registration, bare connection or idle connect
READ_SIZE = 64 * 1024
SETTLE_SECONDS = 1.0  # before reading VmRSS, so that dpsd finished its work
TLS_ONLY_HOLD = 9.0  # dpsd closes a connection without CONNECT after 10 s
MAX_IDLE = 1000  # dpsd admits at most 1000 connections from one address (MqttLimits)


class Failure(Exception):
    """One registration, bare connection or idle device did not end as it should."""


# --- the client ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    context: ssl.SSLContext
    id_scope: str


class Device:
    """One simulated device: a TLS connection and dpsd's MQTT codec, nothing else."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._packets = PacketReader()
        self._pending: list[Packet] = []

    @classmethod
    async def open(cls, target: Target) -> Device:
        reader, writer = await asyncio.open_connection(target.host, target.port, ssl=target.context)
        return cls(reader, writer)

    def send(self, packet: Packet) -> None:
        self._writer.write(encode(packet))

    async def receive(self) -> Packet:
        while not self._pending:
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise Failure("dpsd closed the connection")
            self._pending.extend(self._packets.feed(data))
        return self._pending.pop(0)

    async def expect_publish(self, rid: str) -> tuple[int, dict[str, Any]]:
        """The answer to request ``rid``: (status, body)."""
        packet = await self.receive()
        if not isinstance(packet, Publish) or not packet.topic.startswith(RESPONSE_PREFIX):
            raise Failure(f"expected an answer, got {packet}")
        status_text, _, query = packet.topic[len(RESPONSE_PREFIX) :].partition("/?")
        if f"$rid={rid}" not in query.split("&"):
            raise Failure(f"an answer to another request: {packet.topic}")
        return int(status_text), json.loads(packet.payload)

    async def connect(self, target: Target, registration_id: str) -> None:
        """CONNECT with a SAS token from the group's derived key, then SUBSCRIBE."""
        token = device_token(target.id_scope, registration_id, device_key(registration_id))
        self.send(
            Connect(
                client_id=registration_id,
                keep_alive=KEEP_ALIVE,
                clean_session=True,
                username=(
                    f"{target.id_scope}/registrations/{registration_id}"
                    f"/api-version={DEVICE_API_VERSION}"
                ),
                password=token.encode(),
            )
        )
        answer = await self.receive()
        if not isinstance(answer, ConnAck) or answer.return_code != ConnectReturnCode.ACCEPTED:
            raise Failure(f"CONNECT {registration_id}: {answer}")
        self.send(Subscribe(1, ((RESPONSE_FILTER, 1),)))
        acknowledged = await self.receive()
        if not isinstance(acknowledged, SubAck) or acknowledged.return_codes != (1,):
            raise Failure(f"SUBSCRIBE {registration_id}: {acknowledged}")

    async def ping(self) -> None:
        self.send(PingReq())
        answer = await self.receive()
        if not isinstance(answer, PingResp):
            raise Failure(f"PINGREQ: {answer}")

    async def close(self, *, disconnect: bool) -> None:
        if disconnect:
            self.send(Disconnect())
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()

    def abort(self) -> None:
        transport = self._writer.transport
        transport.abort()


async def register(target: Target, registration_id: str, max_polls: int) -> int:
    """One complete registration; the number of polls beyond the first."""
    device = await Device.open(target)
    try:
        await device.connect(target, registration_id)
        body = json.dumps({"registrationId": registration_id}).encode()
        device.send(Publish(REGISTER_TOPIC.format(rid=1), body))
        status, started = await device.expect_publish("1")
        if status != 202 or "operationId" not in started:
            raise Failure(f"register {registration_id}: {status} {started}")
        for poll in range(max_polls):
            rid = str(2 + poll)
            topic = POLL_TOPIC.format(rid=rid, op=started["operationId"])
            device.send(Publish(topic, b""))  # no wait for retry-after: see the docstring
            status, polled = await device.expect_publish(rid)
            if status == 200 and polled.get("status") == "assigned":
                await device.close(disconnect=True)
                return poll
            if status != 202:
                raise Failure(f"poll {registration_id}: {status} {polled}")
        raise Failure(f"{registration_id} not assigned after {max_polls} polls")
    except BaseException:
        device.abort()
        raise


async def bare_connection(target: Target) -> int:
    """TLS connect to the MQTT port and close: dpsd accepts and closes as well."""
    device = await Device.open(target)
    await device.close(disconnect=False)
    return 0


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Tally:
    latencies: list[float]
    errors: list[str]
    failed: int = 0
    extra_polls: int = 0

    def fail(self, error: BaseException) -> None:
        self.failed += 1
        if len(self.errors) < ERROR_SAMPLES:
            self.errors.append(f"{type(error).__name__}: {error}")


CAUGHT = (Failure, OSError, ssl.SSLError, MalformedPacket, ValueError, KeyError, TimeoutError)


async def closed_loop(
    count: int,
    concurrency: int,
    seconds_at_most: float,
    operation: Callable[[int], Awaitable[int]],
) -> tuple[Tally, float, bool]:
    """Run ``count`` operations, ``concurrency`` at a time: (tally, seconds, timed out)."""
    tally = Tally([], [])
    next_index = 0
    deadline = time.monotonic() + seconds_at_most

    async def lane() -> None:
        nonlocal next_index
        while next_index < count and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT):
                    tally.extra_polls += await operation(index)
            except CAUGHT as error:
                tally.fail(error)
                continue
            tally.latencies.append(time.perf_counter() - began)

    start = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return tally, time.monotonic() - start, next_index < count


# --- phases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    server: ServerProcess
    target: Target
    arguments: argparse.Namespace


async def run_phase(setup: Setup, phase: str, round_number: int, count: int) -> PhaseResult:
    arguments = setup.arguments
    target = setup.target

    async def operation(index: int) -> int:
        if phase == "registrations":
            return await register(target, f"mqtt-r{round_number}-{index}", arguments.max_polls)
        return await bare_connection(target)

    server_before = setup.server.cpu_seconds()
    machine_before = machine_busy_seconds()
    client_before = own_cpu_seconds()
    tally, seconds, timed_out = await closed_loop(
        count, arguments.concurrency, arguments.timeout, operation
    )
    client_cpu = own_cpu_seconds() - client_before
    server_cpu = setup.server.cpu_seconds() - server_before
    machine_cpu = machine_busy_seconds() - machine_before
    if setup.server.process.poll() is not None:
        raise BenchError(f"dpsd exited during the {phase} phase; see {setup.server.log_path}")
    for error in tally.errors:
        print(f"    {phase} error: {error}", file=sys.stderr)
    if tally.extra_polls:
        print(f"    {phase}: {tally.extra_polls} extra polls (still assigning)", file=sys.stderr)
    latencies = sorted(tally.latencies)
    return PhaseResult(
        phase=phase,
        round=round_number,
        completed=len(latencies),
        failed=tally.failed,
        seconds=seconds,
        p50_ms=1000 * _percentile(latencies, 0.50),
        p99_ms=1000 * _percentile(latencies, 0.99),
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=client_cpu,
        machine_cpu_seconds=machine_cpu,
        timed_out=timed_out,
    )


def vm_rss_kb(pid: int) -> int:
    """Resident set size of a process in KB (Linux /proc/<pid>/status, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


@dataclass(frozen=True)
class IdleResult:
    devices: int
    connected: int
    failed: int
    rss_before_kb: int
    rss_connected_kb: int
    rss_after_kb: int
    connect_seconds: float
    server_cpu_seconds: float
    alive: int
    cycle: int
    tls_only: bool

    @property
    def kb_per_device(self) -> float:
        return (
            (self.rss_connected_kb - self.rss_before_kb) / self.connected if self.connected else 0
        )


async def run_idle(setup: Setup, cycle: int) -> IdleResult:
    """Connect --idle devices (CONNECT + SUBSCRIBE), keep them, read VmRSS, disconnect."""
    arguments = setup.arguments
    pid = setup.server.process.pid
    devices: list[Device] = []

    async def connect_one(index: int) -> int:
        device = await Device.open(setup.target)
        try:
            if not arguments.idle_tls_only:
                await device.connect(setup.target, f"mqtt-idle-{cycle}-{index}")
        except BaseException:
            device.abort()
            raise
        devices.append(device)
        return 0

    await asyncio.sleep(SETTLE_SECONDS)
    before = vm_rss_kb(pid)
    server_before = setup.server.cpu_seconds()
    server_clock = time.monotonic()
    try:
        tally, seconds, timed_out = await closed_loop(
            arguments.idle, arguments.concurrency, arguments.timeout, connect_one
        )
        server_cpu = setup.server.cpu_seconds() - server_before
        for error in tally.errors:
            print(f"    idle error: {error}", file=sys.stderr)
        await asyncio.sleep(SETTLE_SECONDS)
        connected = vm_rss_kb(pid)
        held = time.monotonic() - server_clock
        if arguments.idle_tls_only:
            # No PINGREQ before CONNECT; dpsd still held them if this took under 10 s.
            alive = len(devices) if held < TLS_ONLY_HOLD else 0
            pings: list[BaseException | None] = []
        else:
            pings = await asyncio.gather(
                *(asyncio.wait_for(device.ping(), OPERATION_TIMEOUT) for device in devices),
                return_exceptions=True,
            )
            alive = sum(1 for outcome in pings if outcome is None)
        for outcome in pings:
            if isinstance(outcome, BaseException) and not isinstance(outcome, CAUGHT):
                raise outcome
    finally:
        async with asyncio.timeout(arguments.timeout):
            await asyncio.gather(
                *(device.close(disconnect=True) for device in devices), return_exceptions=True
            )
    await asyncio.sleep(SETTLE_SECONDS)
    return IdleResult(
        devices=arguments.idle,
        connected=len(devices),
        failed=tally.failed + (1 if timed_out else 0),
        rss_before_kb=before,
        rss_connected_kb=connected,
        rss_after_kb=vm_rss_kb(pid),
        connect_seconds=seconds,
        server_cpu_seconds=server_cpu,
        alive=alive,
        cycle=cycle,
        tls_only=arguments.idle_tls_only,
    )


# --- report ----------------------------------------------------------------------------


def report(results: list[PhaseResult], rounds: int) -> list[str]:
    return registrations.report(results, rounds, bare="bare TLS connections")


def report_idle(idle: IdleResult) -> list[str]:
    what = "TLS only, no CONNECT" if idle.tls_only else "CONNECT + SUBSCRIBE"
    check = "held under 10 s" if idle.tls_only else "answered PINGREQ"
    return [
        f"idle cycle {idle.cycle}: {idle.connected} of {idle.devices} connected "
        f"({what}) in {idle.connect_seconds:.2f} s, "
        f"{idle.alive} {check}, dpsd CPU {idle.server_cpu_seconds:.2f} s",
        f"dpsd VmRSS: {idle.rss_before_kb} KB before, {idle.rss_connected_kb} KB connected, "
        f"{idle.rss_after_kb} KB after they disconnected",
        f"memory per idle connected device: {idle.kb_per_device:.1f} KB",
    ]


# --- main ------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Complete MQTT device registrations per second against a bare TLS loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=2000, help="operations per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight")
    parser.add_argument("--rounds", type=int, default=1, help="runs of both phases")
    parser.add_argument("--warmup", type=int, default=200, help="operations before round 1")
    parser.add_argument("--idle", type=int, default=1000, help="idle devices (0: skip)")
    parser.add_argument("--idle-cycles", type=int, default=1, help="idle connect cycles")
    parser.add_argument(
        "--idle-tls-only", action="store_true", help="idle connections without CONNECT"
    )
    parser.add_argument("--max-polls", type=int, default=3, help="polls per registration")
    parser.add_argument("--timeout", type=float, default=60, help="seconds at most per phase")
    parser.add_argument("--retry-after", type=int, default=1, help="dpsd serve --retry-after")
    parser.add_argument("--work-dir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    arguments = parser.parse_args(argv)
    if min(arguments.devices, arguments.concurrency, arguments.rounds, arguments.max_polls) <= 0:
        parser.error("--devices, --concurrency, --rounds and --max-polls must be positive")
    if arguments.devices > 1_000_000 or arguments.concurrency > 1000 or arguments.max_polls > 10:
        parser.error("at most 1000000 --devices, 1000 --concurrency and 10 --max-polls")
    if not 1 <= arguments.idle_cycles <= 10:
        parser.error("--idle-cycles within [1, 10]")
    if not 0 <= arguments.idle <= MAX_IDLE:
        parser.error(f"--idle within [0, {MAX_IDLE}] (dpsd's connection limit per address)")
    if arguments.warmup < 0 or not 0 < arguments.timeout <= 3600:
        parser.error("--warmup must not be negative and --timeout within (0, 3600]")
    return arguments


def start_dpsd(data_dir: Path, logs: Path, retry_after: int) -> tuple[ServerProcess, int]:
    """``dpsd serve`` with HTTPS and MQTT on free ports: (server, MQTT port)."""
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir)]
    command += ["--host", HOST, "--https-port", "0", "--mqtt-port", "0"]
    command += ["--retry-after", str(retry_after)]
    ready_file = data_dir / "endpoints.json"
    server = _spawn("dpsd", command, ready_file, logs / "dpsd.log")
    mqtt = json.loads(ready_file.read_text()).get("mqtt")
    if not mqtt:
        server.stop()
        raise BenchError(f"dpsd recorded no MQTT endpoint in {ready_file}")
    return server, int(str(mqtt).rsplit(":", 1)[1])


def raise_open_files(needed: int) -> None:
    """Idle devices each hold a socket here and in dpsd (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"--idle needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run(arguments: argparse.Namespace) -> int:
    temporary = arguments.work_dir is None
    if arguments.work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="dpsd-bench-mqtt-"))
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


def _run_in(work: Path, arguments: argparse.Namespace) -> int:
    data_dir = work / "dpsd-data"
    if data_dir.exists():
        raise BenchError(f"{data_dir} exists; the benchmark needs a fresh data dir")
    raise_open_files(arguments.idle + arguments.concurrency + 256)
    info = dpsd_info(data_dir)
    link_hubs(data_dir, [HUB])
    ca = Path(info["caCertificatePath"])
    print(f"code: {describe_code()}")
    print(f"machine: {describe_machine()}, {ssl.OPENSSL_VERSION}")
    print(
        f"load: 1 client process (asyncio TLS streams + dpsd.mqtt.codec, MQTT 3.1.1), "
        f"{arguments.concurrency} in flight, {arguments.devices} operations per phase, "
        f"{arguments.rounds} round(s), {arguments.warmup} warm-up operations, "
        f"{arguments.idle} idle devices; work dir {work}",
        flush=True,
    )
    server, mqtt_port = start_dpsd(data_dir, work, arguments.retry_after)
    results: list[PhaseResult] = []
    idle: list[IdleResult] = []
    try:
        create_group(server, shared_access_key(info["serviceConnectionString"]), ca)
        target = Target(
            HOST, mqtt_port, ssl.create_default_context(cafile=str(ca)), info["idScope"]
        )
        asyncio.run(_phases(Setup(server, target, arguments), results, idle))
    finally:
        server.stop()
    print()
    print("\n".join(report(results, arguments.rounds)))
    for cycle in idle:
        print()
        print("\n".join(report_idle(cycle)))
    if arguments.json is not None:
        document = {
            "code": describe_code(),
            "machine": describe_machine(),
            "arguments": {
                name: str(value) if isinstance(value, Path) else value
                for name, value in vars(arguments).items()
            },
            "results": [asdict(result) | {"rate": result.rate} for result in results],
            "idle": [asdict(cycle) | {"kbPerDevice": cycle.kb_per_device} for cycle in idle],
        }
        arguments.json.write_text(json.dumps(document, indent=2))
    failed = any(result.failed or result.timed_out for result in results)
    if any(cycle.failed or cycle.alive != cycle.devices for cycle in idle):
        failed = True
    if failed:
        print(
            "some operations failed, a phase hit --timeout or idle devices were lost",
            file=sys.stderr,
        )
        return 1
    return 0


async def _phases(setup: Setup, results: list[PhaseResult], idle: list[IdleResult]) -> None:
    arguments = setup.arguments
    if arguments.warmup:
        for phase in PHASES:
            await run_phase(setup, phase, 0, arguments.warmup)
    for round_number in range(1, arguments.rounds + 1):
        order = PHASES if round_number % 2 else tuple(reversed(PHASES))
        for phase in order:
            result = await run_phase(setup, phase, round_number, arguments.devices)
            print(
                f"  round {round_number} {PHASE_TITLES[phase]:<13} {result.rate:7.0f}/s  "
                f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
                f"srv {result.server_cores:.2f} cli {result.client_cores:.2f} "
                f"other {result.other_cores:.2f} cores  failed {result.failed}",
                flush=True,
            )
            results.append(result)
    for cycle in range(1, arguments.idle_cycles + 1 if arguments.idle else 1):
        idle.append(await run_idle(setup, cycle))


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        return run(arguments)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
