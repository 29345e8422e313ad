"""How long the commands that open a data dir's store take, start to end, as an operator
runs them: ``dpsd info``, ``hub list``, ``certificate list`` and ``policy list``.

    .venv/bin/python bench/store_commands.py [--rounds 10] [--before PATH]

Each command runs as its own process (``python -m dpsd ... --data-dir DIR``, a data dir this
script initialises first in a temporary directory, SQLite), ``--rounds`` times, the servers
taking turns within each round; the table gives the median wall time of each. With
``--before PATH`` (another checkout's ``src``), the same commands also run with PATH first on
``PYTHONPATH``, alternating with this checkout's, and the table gives both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (("info",), ("hub", "list"), ("certificate", "list"), ("policy", "list"))
HERE = Path(__file__).resolve().parent.parent / "src"


def run(source: Path, command: tuple[str, ...], data_dir: Path) -> float:
    environment = dict(os.environ, PYTHONPATH=str(source))
    environment = {key: value for key, value in environment.items() if not key.startswith("DPSD_")}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dpsd", *command, "--data-dir", str(data_dir)],
        env=environment,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--before", type=Path, help="another checkout's src, measured too")
    arguments = parser.parse_args()
    sources = {"after": HERE}
    if arguments.before is not None:
        sources = {"before": arguments.before.resolve(), "after": HERE}
    with tempfile.TemporaryDirectory(prefix="dpsd-cli-") as folder:
        data_dir = Path(folder) / "data"
        run(HERE, ("info",), data_dir)  # initialise: TLS files, store, keys
        times: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        for _ in range(arguments.rounds):
            for name, source in sources.items():
                for command in COMMANDS:
                    times.setdefault((name, command), []).append(run(source, command, data_dir))
    print(f"median of {arguments.rounds} runs, wall time in ms")
    for command in COMMANDS:
        line = f"dpsd {' '.join(command):<18}"
        medians = {name: statistics.median(times[(name, command)]) for name in sources}
        for name, median in medians.items():
            line += f"  {name} {median * 1000:6.0f}"
        if "before" in medians:
            line += f"  after / before {medians['after'] / medians['before']:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
