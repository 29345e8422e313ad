"""Memory dpsd holds per idle connected device at fleet scale: up to 10,000 devices connected
at once, each on its own TLS connection, over MQTT, MQTT over WebSockets or AMQP.

    .venv/bin/python bench/idle_devices.py --transport mqtt [--devices 10000]
        [--client-processes 4] [--before PATH]

For each server measured (``--before PATH``: first a dpsd run with PATH first on PYTHONPATH,
another checkout's src; then this checkout's), on a fresh data dir: ``dpsd serve`` (SQLite,
HTTPS and the transport's port on 127.0.0.1, port 0, the other device port off), one linked
hub and a symmetric-key enrollment group through the service API (bench/registrations.py),
then:

1. dpsd's VmRSS (/proc/<pid>/status) is read, idle: the footprint the devices add to;
2. --client-processes processes (this script with --client) connect --devices devices
   between them, at most --concurrency in flight each, and keep them: each device opens TCP
   from its own loopback address, 127.0.1.1 for the first 1,000, 127.0.1.2 for the next ...
   (dpsd admits at most 1,000 device connections per client address and 10,000 in all; on
   Linux every 127/8 address is the loopback interface's, nothing to set up), the full TLS
   handshake, then the protocol's (bench/mqtt.py: CONNECT + SUBSCRIBE with a SAS token;
   the same over a WebSocket, subprotocol ``mqtt``, on the HTTPS port, the client offering
   permessage-deflate as browsers and Node's ``ws`` do; bench/amqp.py: SASL PLAIN, OPEN,
   BEGIN and both links);
3. VmRSS is read again once all are connected: (connected - idle) / devices is the memory per
   idle connected device; then every device proves dpsd still serves it (an answered
   PINGREQ, or an AMQP request dpsd must reject), they leave, and VmRSS is read once more.

Each device costs a file descriptor here and in dpsd: the script raises its soft
RLIMIT_NOFILE (dpsd inherits it, and ``dpsd serve`` raises its own) and says so when the hard
limit is too low (``ulimit -Hn``). Exit status: 0 when every device of every server connected
and stayed alive, 1 otherwise, 2 when a server did not start or the set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

import amqp
import mqtt
from device_bench import IdleDevice, Target, raise_open_files, start_dpsd, vm_rss_kb
from registrations import HUB, create_group
from service_api import (
    BenchError,
    describe_code,
    describe_machine,
    dpsd_info,
    link_hubs,
    python_path,
)
from service_api import shared_access_key as policy_key

PER_ADDRESS = 1000  # dpsd's ConnectionLimits.max_connections_per_address
SOURCE_PREFIX = "127.0.1."
SETTLE_SECONDS = 2.0
CONNECT_TIMEOUT = 60.0
WS_PATH = "/$iothub/websocket"


class WebSocketStream:
    """A WebSocket connection as the streams bench/mqtt.py's Device reads and writes: binary
    messages in and out, in order."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._sending: asyncio.Task[None] | None = None

    @property
    def transport(self) -> asyncio.Transport:
        return self._connection.transport

    async def read(self, _size: int) -> bytes:
        try:
            message = await self._connection.recv()
        except WebSocketException:
            return b""
        return message if isinstance(message, bytes) else message.encode()

    def write(self, data: bytes) -> None:
        previous = self._sending

        async def send() -> None:
            if previous is not None:
                await previous
            await self._connection.send(data)

        self._sending = asyncio.get_running_loop().create_task(send())

    def close(self) -> None:
        asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        if self._sending is not None:
            with contextlib.suppress(WebSocketException, OSError):
                await self._sending
        await self._connection.close()

    async def wait_closed(self) -> None:
        await self._connection.wait_closed()


async def connect_mqtt(target: Target, registration_id: str) -> IdleDevice:
    return await mqtt.connect_idle(target, registration_id, False)


async def connect_mqtt_ws(target: Target, registration_id: str) -> IdleDevice:
    connection = await connect(
        f"wss://{target.host}:{target.port}{WS_PATH}",
        ssl=target.context,
        subprotocols=["mqtt"],  # type: ignore[list-item]
        local_addr=(target.source, 0) if target.source else None,
        ping_interval=None,
        max_size=None,
        open_timeout=CONNECT_TIMEOUT,
    )
    stream = WebSocketStream(connection)
    device = mqtt.Device(stream, stream)  # type: ignore[arg-type]
    try:
        await device.connect(target, registration_id)
    except BaseException:
        device.abort()
        raise
    return device


async def connect_amqp(target: Target, registration_id: str) -> IdleDevice:
    device: IdleDevice = await amqp.connect_idle(target, registration_id, False)
    return device


@dataclass(frozen=True)
class Transport:
    name: str
    endpoint: str  # its key in endpoints.json
    serve_args: tuple[str, ...]
    what: str
    connect: Callable[[Target, str], Awaitable[IdleDevice]]


TRANSPORTS = {
    "mqtt": Transport(
        "MQTT",
        "mqtt",
        mqtt.MQTT.serve_args,
        "TLS, CONNECT + SUBSCRIBE",
        connect_mqtt,
    ),
    "mqtt-ws": Transport(
        "MQTT over WebSockets",
        "https",
        ("--mqtt-port", "-1", "--amqp-port", "-1"),
        "TLS, WebSocket upgrade (mqtt), CONNECT + SUBSCRIBE",
        connect_mqtt_ws,
    ),
    "amqp": Transport(
        "AMQP",
        "amqp",
        amqp.AMQP.serve_args,
        "TLS, SASL PLAIN + OPEN + BEGIN + 2 links",
        connect_amqp,
    ),
}


# --- the client processes ----------------------------------------------------------------


def source_address(index: int) -> str:
    return f"{SOURCE_PREFIX}{1 + index // PER_ADDRESS}"


async def run_client(job: dict[str, Any]) -> None:
    """Connect this process's devices, then do what the parent says on stdin."""
    transport = TRANSPORTS[job["transport"]]
    context = ssl.create_default_context(cafile=job["ca"])
    base = Target(job["host"], job["port"], context, job["idScope"])
    devices: list[IdleDevice] = []
    failed: list[str] = []
    indices = iter(range(job["first"], job["devices"], job["step"]))

    async def lane() -> None:
        for index in indices:
            target = replace(base, source=source_address(index))
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    devices.append(await transport.connect(target, f"{job['prefix']}-{index}"))
            except Exception as error:  # noqa: BLE001  every failure is counted, none stops the rest
                failed.append(f"{type(error).__name__}: {error}")

    await asyncio.gather(*(lane() for _ in range(job["concurrency"])))
    for error in failed[:3]:
        print(f"    connect error: {error}", file=sys.stderr)
    say({"connected": len(devices), "failed": len(failed)})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "check"
    checks = await asyncio.gather(
        *(asyncio.wait_for(device.check(), CONNECT_TIMEOUT) for device in devices),
        return_exceptions=True,
    )
    say({"alive": sum(1 for outcome in checks if outcome is None)})
    await loop.run_in_executor(None, sys.stdin.readline)  # "leave"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(*(device.leave() for device in devices), return_exceptions=True)
    say({"left": True})


def say(fact: dict[str, Any]) -> None:
    print(json.dumps(fact), flush=True)


# --- the parent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    server: str  # "before" or "after"
    devices: int
    connected: int
    alive: int
    rss_idle_kb: int
    rss_connected_kb: int
    rss_after_kb: int
    connect_seconds: float

    @property
    def kb_per_device(self) -> float:
        return (self.rss_connected_kb - self.rss_idle_kb) / self.connected if self.connected else 0

    @property
    def mb_added(self) -> float:
        return (self.rss_connected_kb - self.rss_idle_kb) / 1024


class Clients:
    """The client processes of one measurement."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self._processes = processes

    @classmethod
    async def start(cls, jobs: list[dict[str, Any]]) -> Clients:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                json.dumps(job),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for job in jobs
        ]
        return cls(processes)

    async def gather(self, key: str) -> list[Any]:
        """Each process's next fact; ``key`` must be in it."""

        async def one(process: asyncio.subprocess.Process) -> Any:
            assert process.stdout is not None
            line = await process.stdout.readline()
            if not line:
                raise BenchError(f"a client process ended (status {await process.wait()})")
            return json.loads(line)[key]

        return list(await asyncio.gather(*(one(process) for process in self._processes)))

    def tell(self, command: str) -> None:
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.write(f"{command}\n".encode())

    async def wait(self) -> None:
        for process in self._processes:
            await process.wait()

    def kill(self) -> None:
        for process in self._processes:
            if process.returncode is None:
                process.kill()


async def measure(
    server: str, pid: int, target: dict[str, Any], arguments: argparse.Namespace
) -> Measured:
    jobs = [
        {
            **target,
            "transport": arguments.transport,
            "devices": arguments.devices,
            "first": index,
            "step": arguments.client_processes,
            "concurrency": arguments.concurrency,
            "prefix": f"idle-{server}",
        }
        for index in range(arguments.client_processes)
    ]
    await asyncio.sleep(SETTLE_SECONDS)
    idle = vm_rss_kb(pid)
    began = time.monotonic()
    clients = await Clients.start(jobs)
    try:
        connected = sum(await clients.gather("connected"))
        seconds = time.monotonic() - began
        await asyncio.sleep(SETTLE_SECONDS)
        rss_connected = vm_rss_kb(pid)
        clients.tell("check")
        alive = sum(await clients.gather("alive"))
        clients.tell("leave")
        await clients.gather("left")
        await clients.wait()
    finally:
        clients.kill()
    await asyncio.sleep(SETTLE_SECONDS)
    return Measured(
        server, arguments.devices, connected, alive, idle, rss_connected, vm_rss_kb(pid), seconds
    )


def run_server(
    server: str, source: str | None, work: Path, arguments: argparse.Namespace
) -> Measured:
    transport = TRANSPORTS[arguments.transport]
    data_dir = work / server / "dpsd-data"
    data_dir.parent.mkdir(parents=True)
    with python_path(source):
        info = dpsd_info(data_dir)
        link_hubs(data_dir, [HUB])
        protocol = mqtt.MQTT if arguments.transport != "amqp" else amqp.AMQP
        protocol = replace(protocol, endpoint=transport.endpoint, serve_args=transport.serve_args)
        dpsd, port = start_dpsd(data_dir, data_dir.parent, 1, protocol)
    try:
        ca = Path(info["caCertificatePath"])
        create_group(dpsd, policy_key(info["serviceConnectionString"]), ca)
        target = {"host": "127.0.0.1", "port": port, "ca": str(ca), "idScope": info["idScope"]}
        result = asyncio.run(measure(server, dpsd.process.pid, target, arguments))
        if dpsd.process.poll() is not None:
            raise BenchError(f"dpsd exited; see {dpsd.log_path}")
        return result
    finally:
        dpsd.stop()


def report(results: list[Measured], transport: Transport) -> list[str]:
    lines = [
        f"{'server':<8} {'devices':>8} {'alive':>6} {'idle MB':>8} {'conn. MB':>9} "
        f"{'after MB':>9} {'added MB':>9} {'KB/device':>10} {'connect s':>10}",
        "-" * 88,
    ]
    lines += [
        f"{r.server:<8} {r.connected:>8} {r.alive:>6} {r.rss_idle_kb / 1024:>8.1f} "
        f"{r.rss_connected_kb / 1024:>9.1f} {r.rss_after_kb / 1024:>9.1f} "
        f"{r.mb_added:>9.1f} {r.kb_per_device:>10.1f} {r.connect_seconds:>10.1f}"
        for r in results
    ]
    if len(results) == 2 and results[1].kb_per_device:
        ratio = results[0].kb_per_device / results[1].kb_per_device
        lines.append(f"memory per idle {transport.name} device, before / after = {ratio:.1f}")
    return lines


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="dpsd's memory per idle connected device, up to 10,000 devices.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default="mqtt")
    parser.add_argument("--devices", type=int, default=10_000, help="connected at once")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32, help="in flight per process")
    parser.add_argument("--before", help="first measure a dpsd with this first on PYTHONPATH")
    parser.add_argument("--work-dir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.devices <= 10_000:
        parser.error("--devices within [1, 10000] (dpsd admits 10,000 device connections)")
    if not 1 <= arguments.client_processes <= 32 or not 1 <= arguments.concurrency <= 500:
        parser.error("--client-processes within [1, 32] and --concurrency within [1, 500]")
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    if arguments.client is not None:
        job = json.loads(arguments.client)
        raise_open_files(arguments_share(job) + 256)
        asyncio.run(run_client(job))
        return 0
    transport = TRANSPORTS[arguments.transport]
    work = arguments.work_dir or Path(tempfile.mkdtemp(prefix="dpsd-bench-idle-"))
    status = 2
    try:
        raise_open_files(arguments.devices + 1024)
        print(f"code: {describe_code()}")
        print(f"machine: {describe_machine()}, {ssl.OPENSSL_VERSION}")
        print(
            f"load: {arguments.devices} idle {transport.name} devices ({transport.what}) from "
            f"{arguments.client_processes} client processes, {arguments.concurrency} "
            f"connecting at once in each; work dir {work}",
            flush=True,
        )
        servers = [("before", arguments.before)] if arguments.before else []
        results = [
            run_server(server, source, work, arguments)
            for server, source in [*servers, ("after", None)]
        ]
        print()
        print("\n".join(report(results, transport)))
        if arguments.json is not None:
            document = {
                "transport": arguments.transport,
                "code": describe_code(),
                "machine": describe_machine(),
                "results": [asdict(r) | {"kbPerDevice": r.kb_per_device} for r in results],
            }
            arguments.json.write_text(json.dumps(document, indent=2))
        lost = [r for r in results if r.connected != r.devices or r.alive != r.devices]
        status = 1 if lost else 0
        if lost:
            print("some devices did not connect or were lost", file=sys.stderr)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
    finally:
        if arguments.work_dir is None and status == 0:
            shutil.rmtree(work, ignore_errors=True)
        elif arguments.work_dir is None:
            print(f"kept {work} (server logs in it)", file=sys.stderr)
    return status


def arguments_share(job: dict[str, Any]) -> int:
    return len(range(job["first"], job["devices"], job["step"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
