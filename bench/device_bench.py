"""What the device-protocol benchmarks share (bench/mqtt.py, bench/amqp.py): one ``dpsd serve``
on a fresh data dir (SQLite, HTTPS and the protocol's port on 127.0.0.1, port 0), one linked
hub and a symmetric-key enrollment group made through the service API (the helpers of
bench/registrations.py), then one client process of asyncio TLS streams running:

    registrations  simulated devices, each on a new TLS connection, register and poll once
                   (the protocol module says how);
    bare TLS       a new TLS connection to the same port, closed at once: what TLS and the
                   accept loop cost, without the protocol;
    idle           --idle devices connect (the protocol's handshake) and stay connected;
                   dpsd's VmRSS (/proc/<pid>/status) before and after gives the memory per
                   idle device; each then proves its connection alive, they leave, and VmRSS
                   is read once more.

Each phase runs --devices operations with --concurrency in flight (a closed loop) and stops
after --timeout seconds; latency is that of one complete operation. dpsd's CPU comes from
/proc, the client's from getrusage, the machine's from /proc/stat.

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
from typing import Protocol

import registrations
from registrations import (
    ERROR_SAMPLES,
    HUB,
    PhaseResult,
    _percentile,
    create_group,
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
    write_report,
)

PHASES = ("registrations", "bare")
PHASE_TITLES = {"registrations": "registration", "bare": "bare TLS"}
OPERATION_TIMEOUT = 30.0  # seconds for one registration, bare connection or idle connect
READ_SIZE = 64 * 1024
SETTLE_SECONDS = 1.0  # before reading VmRSS, so that dpsd finished its work
TLS_ONLY_HOLD = 9.0  # dpsd closes a connection without its handshake after 10 s
MAX_IDLE = 1000  # dpsd admits at most 1000 connections from one address (ConnectionLimits)


class Failure(Exception):
    """One registration, bare connection or idle device did not end as it should."""


CAUGHT: tuple[type[BaseException], ...] = (
    Failure,
    OSError,
    ssl.SSLError,
    ValueError,
    KeyError,
    TimeoutError,
)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    context: ssl.SSLContext
    id_scope: str
    source: str | None = None  # the client's own address (bench/idle_devices.py)


async def open_tls(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A new TCP and TLS connection (full handshake, no session resumption)."""
    local = (target.source, 0) if target.source else None
    return await asyncio.open_connection(
        target.host, target.port, ssl=target.context, local_addr=local
    )


async def close_tls(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def bare_connection(target: Target) -> int:
    """TLS connect to the protocol's port and close: dpsd accepts and closes as well."""
    _, writer = await open_tls(target)
    await close_tls(writer)
    return 0


class IdleDevice(Protocol):
    """A device connection held open in the idle phase."""

    async def check(self) -> None:
        """Prove that dpsd still serves the connection (an exchange it must answer)."""
        ...

    async def leave(self) -> None:
        """End the connection as a device would."""
        ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class DeviceProtocol:
    """What a protocol module gives the shared benchmark."""

    name: str  # "MQTT"
    endpoint: str  # its key in endpoints.json
    serve_args: tuple[str, ...]  # the dpsd serve flags that listen for it on a free port
    client: str  # what the client process speaks, for the report
    handshake: str  # what an idle device did, for the report
    check: str  # how an idle device proved alive, for the report
    errors: tuple[type[Exception], ...]  # the client's own protocol errors
    register: Callable[[Target, str, int], Awaitable[int]]  # (target, id, max polls) -> extra
    connect_idle: Callable[[Target, str, bool], Awaitable[IdleDevice]]  # (.., tls only)


# --- the closed loop ---------------------------------------------------------------------


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


async def closed_loop(
    count: int,
    concurrency: int,
    seconds_at_most: float,
    operation: Callable[[int], Awaitable[int]],
    caught: tuple[type[BaseException], ...] = CAUGHT,
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
            except caught as error:
                tally.fail(error)
                continue
            tally.latencies.append(time.perf_counter() - began)

    start = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return tally, time.monotonic() - start, next_index < count


# --- phases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    server: ServerProcess
    target: Target
    arguments: argparse.Namespace
    protocol: DeviceProtocol

    @property
    def caught(self) -> tuple[type[BaseException], ...]:
        return (*CAUGHT, *self.protocol.errors)


async def run_phase(setup: Setup, phase: str, round_number: int, count: int) -> PhaseResult:
    arguments = setup.arguments
    target = setup.target
    prefix = f"{setup.protocol.endpoint}-r{round_number}"

    async def operation(index: int) -> int:
        if phase == "registrations":
            return await setup.protocol.register(target, f"{prefix}-{index}", arguments.max_polls)
        return await bare_connection(target)

    server_before = setup.server.cpu_seconds()
    machine_before = machine_busy_seconds()
    client_before = own_cpu_seconds()
    tally, seconds, timed_out = await closed_loop(
        count, arguments.concurrency, arguments.timeout, operation, setup.caught
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


# --- idle devices ------------------------------------------------------------------------


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


async def still_alive(setup: Setup, devices: list[IdleDevice], held_since: float) -> int:
    """How many idle devices dpsd still serves: each proves it with the protocol's check;
    TLS-only connections cannot, and count as alive if held for less than dpsd's 10 s."""
    if setup.arguments.idle_tls_only:
        return len(devices) if time.monotonic() - held_since < TLS_ONLY_HOLD else 0
    checks = await asyncio.gather(
        *(asyncio.wait_for(device.check(), OPERATION_TIMEOUT) for device in devices),
        return_exceptions=True,
    )
    for outcome in checks:
        if isinstance(outcome, BaseException) and not isinstance(outcome, setup.caught):
            raise outcome
    return sum(1 for outcome in checks if outcome is None)


async def run_idle(setup: Setup, cycle: int) -> IdleResult:
    """Connect --idle devices, keep them, read VmRSS, check them, let them leave."""
    arguments = setup.arguments
    pid = setup.server.process.pid
    devices: list[IdleDevice] = []
    prefix = f"{setup.protocol.endpoint}-idle-{cycle}"

    async def connect_one(index: int) -> int:
        registration_id = f"{prefix}-{index}"
        connect = setup.protocol.connect_idle(
            setup.target, registration_id, arguments.idle_tls_only
        )
        devices.append(await connect)
        return 0

    await asyncio.sleep(SETTLE_SECONDS)
    before = vm_rss_kb(pid)
    server_before = setup.server.cpu_seconds()
    held_since = time.monotonic()
    try:
        tally, seconds, timed_out = await closed_loop(
            arguments.idle, arguments.concurrency, arguments.timeout, connect_one, setup.caught
        )
        server_cpu = setup.server.cpu_seconds() - server_before
        for error in tally.errors:
            print(f"    idle error: {error}", file=sys.stderr)
        await asyncio.sleep(SETTLE_SECONDS)
        connected = vm_rss_kb(pid)
        alive = await still_alive(setup, devices, held_since)
    finally:
        async with asyncio.timeout(arguments.timeout):
            await asyncio.gather(*(device.leave() for device in devices), return_exceptions=True)
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


# --- report ------------------------------------------------------------------------------


def report(results: list[PhaseResult], rounds: int) -> list[str]:
    return registrations.report(results, rounds, bare="bare TLS connections")


def report_idle(idle: IdleResult, protocol: DeviceProtocol) -> list[str]:
    what = f"TLS only, no {protocol.name}" if idle.tls_only else protocol.handshake
    check = "held under 10 s" if idle.tls_only else protocol.check
    return [
        f"idle cycle {idle.cycle}: {idle.connected} of {idle.devices} connected "
        f"({what}) in {idle.connect_seconds:.2f} s, "
        f"{idle.alive} {check}, dpsd CPU {idle.server_cpu_seconds:.2f} s",
        f"dpsd VmRSS: {idle.rss_before_kb} KB before, {idle.rss_connected_kb} KB connected, "
        f"{idle.rss_after_kb} KB after they disconnected",
        f"memory per idle connected device: {idle.kb_per_device:.1f} KB",
    ]


# --- main --------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None, protocol: DeviceProtocol) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            f"Complete {protocol.name} device registrations per second against a bare TLS "
            "loop, and the memory per idle device."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=2000, help="operations per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight")
    parser.add_argument("--rounds", type=int, default=1, help="runs of both phases")
    parser.add_argument("--warmup", type=int, default=200, help="operations before round 1")
    parser.add_argument("--idle", type=int, default=1000, help="idle devices (0: skip)")
    parser.add_argument("--idle-cycles", type=int, default=1, help="idle connect cycles")
    parser.add_argument(
        "--idle-tls-only",
        action="store_true",
        help=f"idle connections stop after the TLS handshake (no {protocol.name})",
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


def start_dpsd(
    data_dir: Path, logs: Path, retry_after: int, protocol: DeviceProtocol
) -> tuple[ServerProcess, int]:
    """``dpsd serve`` with HTTPS and the protocol on free ports: (server, protocol port)."""
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir)]
    command += ["--host", HOST, "--https-port", "0", *protocol.serve_args]
    command += ["--retry-after", str(retry_after)]
    ready_file = data_dir / "endpoints.json"
    server = _spawn("dpsd", command, ready_file, logs / "dpsd.log")
    endpoint = json.loads(ready_file.read_text()).get(protocol.endpoint)
    if not endpoint:
        server.stop()
        raise BenchError(f"dpsd recorded no {protocol.name} endpoint in {ready_file}")
    return server, int(str(endpoint).rsplit(":", 1)[1])


def start_fleet(
    data_dir: Path, logs: Path, retry_after: int, protocol: DeviceProtocol
) -> tuple[ServerProcess, Target]:
    """dpsd on a fresh ``data_dir`` with the benchmark's hub linked and its enrollment
    group created, serving ``protocol``: (server, where its devices connect)."""
    info = dpsd_info(data_dir)
    link_hubs(data_dir, [HUB])
    ca = Path(info["caCertificatePath"])
    server, port = start_dpsd(data_dir, logs, retry_after, protocol)
    try:
        create_group(server, shared_access_key(info["serviceConnectionString"]), ca)
    except BaseException:
        server.stop()
        raise
    context = ssl.create_default_context(cafile=str(ca))
    return server, Target(HOST, port, context, info["idScope"])


def raise_open_files(needed: int) -> None:
    """Idle devices each hold a socket here and in dpsd (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"{needed} open files needed; the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run(arguments: argparse.Namespace, protocol: DeviceProtocol) -> int:
    temporary = arguments.work_dir is None
    if arguments.work_dir is None:
        work = Path(tempfile.mkdtemp(prefix=f"dpsd-bench-{protocol.endpoint}-"))
    else:
        work = arguments.work_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    status = 2
    try:
        status = _run_in(work, arguments, protocol)
    finally:
        if temporary and status == 0:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            print(f"kept {work} (server log in it)", file=sys.stderr)
    return status


def _run_in(work: Path, arguments: argparse.Namespace, protocol: DeviceProtocol) -> int:
    data_dir = work / "dpsd-data"
    if data_dir.exists():
        raise BenchError(f"{data_dir} exists; the benchmark needs a fresh data dir")
    raise_open_files(arguments.idle + arguments.concurrency + 256)
    print(f"code: {describe_code()}")
    print(f"machine: {describe_machine()}, {ssl.OPENSSL_VERSION}")
    print(
        f"load: 1 client process ({protocol.client}), "
        f"{arguments.concurrency} in flight, {arguments.devices} operations per phase, "
        f"{arguments.rounds} round(s), {arguments.warmup} warm-up operations, "
        f"{arguments.idle} idle devices; work dir {work}",
        flush=True,
    )
    server, target = start_fleet(data_dir, work, arguments.retry_after, protocol)
    results: list[PhaseResult] = []
    idle: list[IdleResult] = []
    try:
        asyncio.run(_phases(Setup(server, target, arguments, protocol), results, idle))
    finally:
        server.stop()
    print()
    print("\n".join(report(results, arguments.rounds)))
    for cycle in idle:
        print()
        print("\n".join(report_idle(cycle, protocol)))
    if arguments.json is not None:
        write_json(arguments, protocol, results, idle)
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


def write_json(
    arguments: argparse.Namespace,
    protocol: DeviceProtocol,
    results: list[PhaseResult],
    idle: list[IdleResult],
) -> None:
    write_report(
        arguments.json,
        arguments,
        results,
        protocol=protocol.name,
        idle=[asdict(cycle) | {"kbPerDevice": cycle.kb_per_device} for cycle in idle],
    )


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


def main(protocol: DeviceProtocol, argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv, protocol)
    try:
        return run(arguments, protocol)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
