"""What one MQTT request-and-answer exchange over TLS costs dpsd in CPU, with no use case in
it: the floor under each of the four exchanges of a registration (CONNACK, SUBACK, the
register's answer, the poll's), which a bare TLS accept does not have.

    .venv/bin/python bench/mqtt_exchange.py [--devices 32] [--pings 2000] [--rounds 3]

The set-up of bench/mqtt.py (``dpsd serve`` on a fresh data dir, SQLite, one linked hub,
the symmetric-key enrollment group; its devices and client). ``--devices`` devices connect
(TLS, CONNECT, SUBSCRIBE) and then each sends ``--pings`` PINGREQs one after the other,
waiting for each PINGRESP, all devices at once. dpsd answers a PINGREQ in place (no task, no
store): what it spends per exchange is the socket read and write, TLS, the event loop, the
device listener and the MQTT codec. Prints, per round, dpsd's CPU (from /proc) per exchange
and the exchanges per second, then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from device_bench import Target, start_fleet
from mqtt import MQTT, Device
from service_api import ServerProcess


async def exchanges(
    server: ServerProcess, target: Target, arguments: argparse.Namespace
) -> list[float]:
    devices = []
    for number in range(arguments.devices):
        device = await Device.open(target)
        await device.connect(target, f"ping-{number}")
        devices.append(device)

    async def pings(device: Device) -> None:
        for _ in range(arguments.pings):
            await device.check()

    per_round = []
    for round_number in range(1, arguments.rounds + 1):
        cpu, wall = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(pings(device) for device in devices))
        count = arguments.devices * arguments.pings
        cpu, wall = server.cpu_seconds() - cpu, time.perf_counter() - wall
        per_round.append(cpu / count * 1e6)
        print(
            f"  round {round_number}: {per_round[-1]:.1f} µs of dpsd CPU per exchange, "
            f"{count / wall:.0f} exchanges/s"
        )
    for device in devices:
        await device.leave()
    return per_round


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=32, help="connected at once")
    parser.add_argument("--pings", type=int, default=2000, help="per device and round")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dpsd-bench-exchange-"))
    data_dir = work / "dpsd-data"
    try:
        server, target = start_fleet(data_dir, work, 1, MQTT)
        try:
            per_round = asyncio.run(exchanges(server, target, arguments))
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"median: {statistics.median(per_round):.1f} µs of dpsd CPU per exchange")
    return 0


if __name__ == "__main__":
    sys.exit(main())
