"""The CPU of a complete MQTT device registration inside dpsd, without sockets or TLS: what
dpsd's own MQTT core, device answers, use cases, store and logging cost a registration, with
none of the noise of a load client sharing the machine.

    .venv/bin/python bench/mqtt_in_process.py [--registrations 3000] [--rounds 3]
        [--database postgresql://...]

Builds dpsd's runtime in this process (``dpsd.app.build_runtime``, the composition root
``dpsd serve`` uses: SQLite store in a temporary directory, logging at the default level to
a file there) with one linked IoT hub (recording assignments only) and the symmetric-key
enrollment group of bench/mqtt.py, created through the service API (in process, over ASGI).
Then, for each device, it drives one ``MqttDevice`` (the object the MQTT listener makes per
connection) with the packets of a registration as bench/mqtt.py's devices send them:
CONNECT (SAS token signed with the key derived from the group key), SUBSCRIBE, the register
PUBLISH, the poll PUBLISH of the operation its answer names, and DISCONNECT; each answer is
decoded and the poll's checked to be "assigned". Every device is new (its own registration
id), so each registration writes a new registration state. With ``--database``, the store
is a scratch database made for the run on that PostgreSQL server (and dropped after it);
the CPU counted is still this process's alone, not the PostgreSQL server's.

Prints, per round, the CPU microseconds per registration (``time.process_time`` over the
round, the client's work included: building and signing its packets, about a tenth) and the
median over the rounds. The client part is the same for any two versions of dpsd, so run it
alternately against two checkouts (``PYTHONPATH=/path/to/src``) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dpsd.app import Runtime, build_runtime
from dpsd.devices.answers import DeviceRequests
from dpsd.mqtt.codec import Connect, Disconnect, PacketReader, Publish, Subscribe, encode
from dpsd.mqtt.connection import MqttConnection
from dpsd.mqtt.handlers import DeviceSession
from dpsd.mqtt.server import MqttDevice
from dpsd.service.device_events import DeviceProtocol
from dpsd.settings import Settings
from dpsd.telemetry.logs import LogFormat, LogLevel, configure_logging
from registrations import (
    GROUP_ID,
    GROUP_KEY,
    HUB,
    SERVICE_API_VERSION,
    device_key,
    device_token,
)
from service_api import POLICY, SERVICE_HOST, sas_token
from workers import scratch_database

SUBSCRIBE = encode(Subscribe(1, (("$dps/registrations/res/#", 1),)))
DISCONNECT = encode(Disconnect())
REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/?$rid=1"
POLL_TOPIC = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={}"


class Failed(Exception):
    """A registration did not end assigned."""


async def create_group(runtime: Runtime) -> None:
    key = runtime.policies[POLICY].primary_key
    body = {
        "enrollmentGroupId": GROUP_ID,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": GROUP_KEY, "secondaryKey": GROUP_KEY},
        },
        "iotHubs": [HUB],
        "allocationPolicy": "hashed",
    }
    transport = httpx.ASGITransport(app=runtime.asgi_app)
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{SERVICE_HOST}") as api:
        response = await api.put(
            f"/enrollmentGroups/{GROUP_ID}",
            params={"api-version": SERVICE_API_VERSION},
            headers={"Authorization": sas_token(SERVICE_HOST, POLICY, key, ttl=3600)},
            json=body,
        )
    if response.status_code != 200:
        raise Failed(f"creating the enrollment group got {response.status_code}")


def answers(data: bytes) -> list[object]:
    return list(PacketReader(1 << 20).feed(data))


async def register(requests: DeviceRequests, id_scope: str, registration_id: str) -> None:
    """One device's registration, packet by packet, as the listener hands them over."""
    device = MqttDevice(MqttConnection(128 * 1024), DeviceSession(requests, ()))

    async def send(packet: bytes) -> bytes:
        answer = device.receive(packet)
        return answer if isinstance(answer, bytes) else await answer

    username = f"{id_scope}/registrations/{registration_id}/api-version=2019-03-31"
    token = device_token(id_scope, registration_id, device_key(registration_id))
    await send(encode(Connect(registration_id, 300, True, username, token.encode())))
    await send(SUBSCRIBE)
    body = json.dumps({"registrationId": registration_id}).encode()
    (started,) = answers(await send(encode(Publish(REGISTER_TOPIC, body))))
    operation_id = json.loads(started.payload)["operationId"]  # type: ignore[attr-defined]
    (polled,) = answers(await send(encode(Publish(POLL_TOPIC.format(operation_id), b""))))
    status = json.loads(polled.payload).get("status")  # type: ignore[attr-defined]
    if status != "assigned":
        raise Failed(f"{registration_id} ended {status!r}")
    await send(DISCONNECT)


async def run(arguments: argparse.Namespace, data_dir: Path) -> list[float]:
    async with build_runtime(Settings(data_dir=data_dir, database=arguments.database)) as runtime:
        await runtime.hubs.link(HUB)
        await create_group(runtime)
        requests = DeviceRequests(runtime.devices, 1, runtime.now, protocol=DeviceProtocol.MQTT)
        for number in range(arguments.warmup):
            await register(requests, runtime.id_scope, f"warm-{number}")
        per_round = []
        for round_number in range(1, arguments.rounds + 1):
            started = time.process_time()
            for number in range(arguments.registrations):
                await register(requests, runtime.id_scope, f"r{round_number}-{number}")
            seconds = time.process_time() - started
            per_round.append(seconds / arguments.registrations * 1e6)
            print(f"  round {round_number}: {per_round[-1]:.1f} µs CPU per registration")
        return per_round


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registrations", type=int, default=3000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200, help="registrations first")
    parser.add_argument("--database", help="a PostgreSQL server (URL); default: SQLite")
    arguments = parser.parse_args()
    with (
        scratch_database(arguments.database) as arguments.database,
        tempfile.TemporaryDirectory(prefix="dpsd-bench-in-process-") as work,
        open(Path(work) / "dpsd.log", "w") as log,
    ):
        configure_logging(LogLevel.INFO, LogFormat.TEXT, stream=log)
        try:
            per_round = asyncio.run(run(arguments, Path(work) / "data"))
        except Failed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"median: {statistics.median(per_round):.1f} µs CPU per registration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
