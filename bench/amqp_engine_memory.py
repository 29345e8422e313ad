"""What proton's AMQP engine alone holds per connection, before a byte is exchanged: the floor
under dpsd's memory per idle AMQP device, whatever dpsd does around it.

    .venv/bin/python bench/amqp_engine_memory.py [--connections 3000]

Each stage runs in a fresh process of its own (so that one stage's freed memory does not
serve the next) and makes ``--connections`` sets of proton objects, kept alive, reading the
process's ``VmRSS`` (/proc/self/status) before and after:

    transport      a server ``Transport`` (it allocates its input and output buffers here)
    bound          the same, bound to a ``Connection``
    with links     the same, with a session and two links (a sender and a receiver), as an
                   idle DPS device over AMQP keeps

The table gives KB per connection for each stage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

STAGES = ("transport", "bound", "with links")


def vm_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(stage: str, connections: int) -> float:
    """KB of VmRSS per connection for ``stage``, in this process."""
    from proton import Connection, Transport

    kept: list[Any] = []
    before = vm_rss_kb()
    for index in range(connections):
        transport = Transport(Transport.SERVER)
        if stage == "transport":
            kept.append(transport)
            continue
        connection = Connection()
        transport.bind(connection)
        if stage == "bound":
            kept.append((transport, connection))
            continue
        session = connection.session()
        links = (session.sender(f"sender-{index}"), session.receiver(f"receiver-{index}"))
        kept.append((transport, connection, session, links))
    return (vm_rss_kb() - before) / connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.stage:
        print(json.dumps(measure(options.stage, options.connections)))
        return
    import proton

    version = ".".join(str(part) for part in proton.VERSION)
    print(f"proton {version}, {options.connections} connections per stage")
    print(f"{'stage':<12} {'KB/connection':>14}")
    for stage in STAGES:
        command = [sys.executable, __file__, "--stage", stage]
        command += ["--connections", str(options.connections)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        print(f"{stage:<12} {json.loads(result.stdout):>14.1f}")


if __name__ == "__main__":
    main()
