"""Two versions of dpsd under the same device load at the same time: the server CPU each
spends per complete registration and per bare TLS accept, and each one's ratio of the two.

    .venv/bin/python bench/side_by_side.py --other-src /path/to/other/checkout/src
        [--protocol mqtt] [--devices 4000] [--rounds 5] [--concurrency 32]

One version is this checkout's ``src`` (``this``), the other the ``src`` folder given
(``other``: a ``git worktree add /tmp/before <commit>`` of the code before a change, say),
each as its own ``dpsd serve`` on a fresh data dir set up as bench/mqtt.py and bench/amqp.py
set theirs up (bench/device_bench.py). The client sends operation 0 to one server,
operation 1 to the other, and so on, ``--concurrency`` in flight in all: both servers
are loaded at once, through the same moments of the machine, so a slower or busier moment
weighs on both alike. That is what a benchmark of one version after the other cannot
give on a shared machine, where the CPU one operation costs moves by a tenth or more from
one run to the next.

Each round runs a registration phase and a bare TLS phase (in alternating order, each
``--devices`` operations split between the two servers) and reports, per server, the
server CPU per operation (``/proc``) and the ratio registration / bare TLS; then
``this / other`` for each. Medians over the rounds come last. The exit status is as
bench/device_bench.py's: 0 when every operation succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import amqp
import mqtt
from device_bench import (
    CAUGHT,
    DeviceProtocol,
    Target,
    bare_connection,
    closed_loop,
    raise_open_files,
    start_fleet,
)
from service_api import BenchError, ServerProcess, describe_code, describe_machine

PROTOCOLS = {"mqtt": mqtt.MQTT, "amqp": amqp.AMQP}
PHASES = ("registrations", "bare")
NAMES = ("this", "other")


@dataclass
class Side:
    name: str
    server: ServerProcess
    target: Target
    cpu: dict[str, list[float]] = field(default_factory=dict)  # ms per operation, by phase


@contextlib.contextmanager
def code_from(src: Path | None) -> Iterator[None]:
    """The dpsd commands started within run the code in ``src`` (None: this checkout's)."""
    before = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


async def phase(
    sides: list[Side],
    protocol: DeviceProtocol,
    kind: str,
    label: str,
    arguments: argparse.Namespace,
    count: int,
) -> tuple[list[float], int]:
    """``count`` operations of one kind, alternating between the sides: each side's server
    CPU per operation (ms), and how many failed."""
    done = [0] * len(sides)

    async def operation(index: int) -> int:
        side = index % len(sides)
        target = sides[side].target
        if kind == "registrations":
            extra = await protocol.register(target, f"{label}-{index}", arguments.max_polls)
        else:
            extra = await bare_connection(target)
        done[side] += 1
        return extra

    before = [side.server.cpu_seconds() for side in sides]
    caught = (*CAUGHT, *protocol.errors)
    tally, _, timed_out = await closed_loop(
        count, arguments.concurrency, arguments.timeout, operation, caught
    )
    spent = [side.server.cpu_seconds() - was for side, was in zip(sides, before, strict=True)]
    for error in tally.errors:
        print(f"    {kind} error: {error}", file=sys.stderr)
    per_op = [1000 * cpu / n if n else 0.0 for cpu, n in zip(spent, done, strict=True)]
    return per_op, tally.failed + (1 if timed_out else 0)


async def rounds(sides: list[Side], protocol: DeviceProtocol, arguments: argparse.Namespace) -> int:
    failed = 0
    if arguments.warmup:
        for kind in PHASES:
            failed += (await phase(sides, protocol, kind, "warm", arguments, arguments.warmup))[1]
    for number in range(1, arguments.rounds + 1):
        order = PHASES if number % 2 else tuple(reversed(PHASES))
        for kind in order:
            per_op, lost = await phase(
                sides, protocol, kind, f"r{number}", arguments, arguments.devices
            )
            failed += lost
            for side, ms in zip(sides, per_op, strict=True):
                side.cpu.setdefault(kind, []).append(ms)
        print(f"  round {number}: " + "   ".join(describe(side, -1) for side in sides), flush=True)
    return failed


def describe(side: Side, index: int) -> str:
    registration, bare = side.cpu["registrations"][index], side.cpu["bare"][index]
    return (
        f"{side.name} registration {registration:.3f} ms, bare {bare:.3f} ms, "
        f"ratio {registration / bare:.2f}"
    )


def report(sides: list[Side]) -> list[str]:
    this, other = sides
    lines = ["", "per round, this / other:"]
    for index in range(len(this.cpu["bare"])):
        ratio_this = this.cpu["registrations"][index] / this.cpu["bare"][index]
        ratio_other = other.cpu["registrations"][index] / other.cpu["bare"][index]
        lines.append(
            f"  round {index + 1}: registration "
            f"{this.cpu['registrations'][index] / other.cpu['registrations'][index]:.3f}, "
            f"bare {this.cpu['bare'][index] / other.cpu['bare'][index]:.3f}, "
            f"ratio {ratio_this:.2f} against {ratio_other:.2f}"
        )
    lines.append("")
    lines.append("medians of the rounds (server CPU ms per operation):")
    lines.append(f"{'':8} {'registration':>13} {'bare TLS':>9} {'ratio':>6}")
    for side in sides:
        registration = statistics.median(side.cpu["registrations"])
        bare = statistics.median(side.cpu["bare"])
        ratios = [r / b for r, b in zip(side.cpu["registrations"], side.cpu["bare"], strict=True)]
        lines.append(
            f"{side.name:8} {registration:13.3f} {bare:9.3f} {statistics.median(ratios):6.2f}"
        )
    changes = [
        t / o for t, o in zip(this.cpu["registrations"], other.cpu["registrations"], strict=True)
    ]
    lines.append(f"this / other, registration CPU: {statistics.median(changes):.3f}")
    return lines


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--other-src", type=Path, required=True, help="the other dpsd's src")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="mqtt")
    parser.add_argument("--devices", type=int, default=4000, help="operations per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight, in all")
    parser.add_argument("--rounds", type=int, default=5, help="runs of both phases")
    parser.add_argument("--warmup", type=int, default=200, help="operations before round 1")
    parser.add_argument("--max-polls", type=int, default=3, help="polls per registration")
    parser.add_argument("--timeout", type=float, default=120, help="seconds at most per phase")
    parser.add_argument("--retry-after", type=int, default=1, help="dpsd serve --retry-after")
    arguments = parser.parse_args(argv)
    if not (arguments.other_src / "dpsd" / "__init__.py").is_file():
        parser.error(f"{arguments.other_src} holds no dpsd package (give a checkout's src)")
    if min(arguments.devices, arguments.concurrency, arguments.rounds, arguments.max_polls) <= 0:
        parser.error("--devices, --concurrency, --rounds and --max-polls must be positive")
    return arguments


def main() -> int:
    arguments = parse_arguments(sys.argv[1:])
    protocol = PROTOCOLS[arguments.protocol]
    work = Path(tempfile.mkdtemp(prefix="dpsd-bench-side-by-side-"))
    sides: list[Side] = []
    failed = 1
    try:
        raise_open_files(arguments.concurrency + 256)
        print(f"this: {describe_code()}; other: {arguments.other_src.resolve()}")
        print(f"machine: {describe_machine()}")
        print(
            f"load: {protocol.name}, {arguments.concurrency} in flight across both servers, "
            f"{arguments.devices} operations per phase (half each), {arguments.rounds} rounds",
            flush=True,
        )
        for name, src in zip(NAMES, (None, arguments.other_src.resolve()), strict=True):
            folder = work / name
            folder.mkdir()
            with code_from(src):
                server, target = start_fleet(
                    folder / "dpsd-data", folder, arguments.retry_after, protocol
                )
            sides.append(Side(name, server, target))
        started = time.monotonic()
        failed = asyncio.run(rounds(sides, protocol, arguments))
        print("\n".join(report(sides)))
        print(f"({time.monotonic() - started:.0f} s)")
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        for side in sides:
            side.server.stop()
        if failed:
            print(f"kept {work} (server logs in it)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"{failed} operations failed or a phase hit --timeout", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
