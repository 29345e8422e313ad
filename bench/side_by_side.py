"""Two dpsd servers under one device load at the same time, each operation going to one
and the next to the other, so that a slower or busier moment of the machine weighs on
both alike. On a shared machine the CPU an operation costs moves by a tenth or more from
one run to the next (and from one phase to the next within a run); between two servers
loaded at once, it moves by about one percent.

    .venv/bin/python bench/side_by_side.py [--other-src /path/to/other/checkout/src]
        [--protocol mqtt] [--devices 4000] [--rounds 5] [--concurrency 32]

Each server is its own ``dpsd serve`` on a fresh data dir, set up as bench/mqtt.py and
bench/amqp.py set theirs up (bench/device_bench.py); ``--concurrency`` operations are in
flight in all, each round runs two phases of ``--devices`` operations, and the server CPU
per operation comes from ``/proc``. Two uses:

- **Two versions** (``--other-src``: the ``src`` folder of another checkout, a
  ``git worktree add /tmp/before <commit>`` of the code before a change, say): one server
  runs this checkout (``this``), the other that code (``other``). A round is a phase of
  complete registrations, then one of bare TLS accepts (the order alternating by round),
  each split between the two. Reported: each server's CPU per registration and per bare
  accept and their ratio, and ``this / other`` for each. The same code on both sides
  reads about 1.00 (within a percent).
- **One version's ratio** (no ``--other-src``): both servers run this checkout; in each
  phase one server takes only complete registrations while the other takes only bare TLS
  accepts, and the next phase swaps them. A round's ratio is the registrations' CPU per
  operation over the bare accepts', both servers' figures summed: the issue's measure of
  what a registration costs against a bare TLS accept, under the same moments of the
  machine (bench/mqtt.py measures the two in phases one after the other).

Medians over the rounds come last. The exit status is as bench/device_bench.py's: 0 when
every operation succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
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
from service_api import (
    BenchError,
    ServerProcess,
    describe_code,
    describe_machine,
    python_path,
)

PROTOCOLS = {"mqtt": mqtt.MQTT, "amqp": amqp.AMQP}
PHASES = ("registrations", "bare")
NAMES = ("this", "other")


@dataclass
class Side:
    name: str
    server: ServerProcess
    target: Target
    cpu: dict[str, list[float]] = field(default_factory=dict)  # ms per operation, by phase


async def phase(
    sides: list[Side],
    protocol: DeviceProtocol,
    kinds: tuple[str, ...],
    label: str,
    arguments: argparse.Namespace,
    count: int,
) -> tuple[list[float], int]:
    """``count`` operations, alternating between the sides, side ``i`` running operations
    of ``kinds[i]``: each side's server CPU per operation (ms), and how many failed."""
    done = [0] * len(sides)

    async def operation(index: int) -> int:
        side = index % len(sides)
        target = sides[side].target
        if kinds[side] == "registrations":
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
        print(f"    {'/'.join(kinds)} error: {error}", file=sys.stderr)
    per_op = [1000 * cpu / n if n else 0.0 for cpu, n in zip(spent, done, strict=True)]
    return per_op, tally.failed + (1 if timed_out else 0)


async def rounds(sides: list[Side], protocol: DeviceProtocol, arguments: argparse.Namespace) -> int:
    """Each round: the phases of one kind each on both sides (two versions), or (one
    version) a phase with registrations on one side and bare accepts on the other, then
    the other way round."""
    failed = 0
    if arguments.other_src is None:
        passes = [("registrations", "bare"), ("bare", "registrations")]
    else:
        passes = [(kind, kind) for kind in PHASES]
    if arguments.warmup:
        for kinds in passes:
            failed += (await phase(sides, protocol, kinds, "warm", arguments, arguments.warmup))[1]
    for number in range(1, arguments.rounds + 1):
        for kinds in passes if number % 2 else list(reversed(passes)):
            per_op, lost = await phase(
                sides, protocol, kinds, f"r{number}", arguments, arguments.devices
            )
            failed += lost
            for side, kind, ms in zip(sides, kinds, per_op, strict=True):
                side.cpu.setdefault(kind, []).append(ms)
        if arguments.other_src is None:
            print(f"  round {number}: {describe_one_version(sides, -1)}", flush=True)
        else:
            print(f"  round {number}: " + "   ".join(describe(side, -1) for side in sides))
    return failed


def describe_one_version(sides: list[Side], index: int) -> str:
    """The round's two passes, each side's figure of each kind averaged."""
    registration = statistics.mean(side.cpu["registrations"][index] for side in sides)
    bare = statistics.mean(side.cpu["bare"][index] for side in sides)
    return (
        f"registration {registration:.3f} ms, bare {bare:.3f} ms, ratio {registration / bare:.2f}"
    )


def describe(side: Side, index: int) -> str:
    registration, bare = side.cpu["registrations"][index], side.cpu["bare"][index]
    return (
        f"{side.name} registration {registration:.3f} ms, bare {bare:.3f} ms, "
        f"ratio {registration / bare:.2f}"
    )


def report_one_version(sides: list[Side]) -> list[str]:
    """Each round's ratio, both servers' figures of each kind summed; their median."""
    ratios = []
    for index in range(len(sides[0].cpu["bare"])):
        registration = sum(side.cpu["registrations"][index] for side in sides)
        bare = sum(side.cpu["bare"][index] for side in sides)
        ratios.append(registration / bare)
    return [
        "",
        "registration / bare TLS, per round: " + ", ".join(f"{r:.2f}" for r in ratios),
        f"median: {statistics.median(ratios):.2f} (from {min(ratios):.2f} to {max(ratios):.2f})",
    ]


def report_two_versions(sides: list[Side]) -> list[str]:
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
    parser.add_argument(
        "--other-src", type=Path, help="the other dpsd's src (none: this one's ratio)"
    )
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="mqtt")
    parser.add_argument("--devices", type=int, default=4000, help="operations per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight, in all")
    parser.add_argument("--rounds", type=int, default=5, help="runs of both phases")
    parser.add_argument("--warmup", type=int, default=200, help="operations before round 1")
    parser.add_argument("--max-polls", type=int, default=3, help="polls per registration")
    parser.add_argument("--timeout", type=float, default=120, help="seconds at most per phase")
    parser.add_argument("--retry-after", type=int, default=1, help="dpsd serve --retry-after")
    arguments = parser.parse_args(argv)
    other = arguments.other_src
    if other is not None and not (other / "dpsd" / "__init__.py").is_file():
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
        other = arguments.other_src
        if other is None:
            print(f"code: {describe_code()}, on both sides")
        else:
            print(f"this: {describe_code()}; other: {other.resolve()}")
        print(f"machine: {describe_machine()}")
        print(
            f"load: {protocol.name}, {arguments.concurrency} in flight across both servers, "
            f"{arguments.devices} operations per phase (half each), {arguments.rounds} rounds",
            flush=True,
        )
        versions = (None, None if other is None else other.resolve())
        names = NAMES if other is not None else ("server 1", "server 2")
        for index, (name, src) in enumerate(zip(names, versions, strict=True)):
            folder = work / f"server-{index + 1}"
            folder.mkdir()
            with python_path(None if src is None else str(src)):
                server, target = start_fleet(
                    folder / "dpsd-data", folder, arguments.retry_after, protocol
                )
            sides.append(Side(name, server, target))
        started = time.monotonic()
        failed = asyncio.run(rounds(sides, protocol, arguments))
        lines = report_one_version(sides) if other is None else report_two_versions(sides)
        print("\n".join(lines))
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
