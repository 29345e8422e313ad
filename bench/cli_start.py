"""How long the ``dpsd`` command takes, start to finish, next to the floor of any Python
command on the same machine in the same run.

Starts ``dpsd serve`` on a fresh data dir (127.0.0.1, HTTPS on a free port, MQTT and AMQP
off), creates one enrollment, then runs each command --runs times as a fresh process,
taking turns (one run of each command, then the next round), so that load from elsewhere
falls on all of them alike. Every process has a 30 s timeout and must exit 0.

    python -c pass                  the floor: the interpreter starting and stopping
    dpsd --version
    dpsd --help
    dpsd enrollment list            a client command against the local dpsd (table)
    dpsd enrollment list -o json
    dpsd enrollment show bench-1

The client commands find the server through the data dir (DPSD_DATA_DIR), read its owner
policy from the store and send one request over TLS, as a user's would. The table gives
the median and p90 wall time of each command, the median over the floor's (and minus it),
the median CPU time of the process (user and system: what a busy machine inflates least),
and the bar: 0.3 s of wall time for ``--help`` and a client command.

``--before PATH`` also runs each dpsd command with PATH first on PYTHONPATH (another
checkout's src, and the packages it ran with), in the same rounds: "before: dpsd --help".

    .venv/bin/python bench/cli_start.py [--runs 30] [--json] [--before PATH]

Exit status 0 when the medians meet the bar, 1 when they do not, 2 when the server did not
start or a command failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service_api import BenchError, start_dpsd

BAR_SECONDS = 0.3
COMMAND_TIMEOUT = 30
DPSD = [sys.executable, "-m", "dpsd"]
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "dpsd --version": [*DPSD, "--version"],
    "dpsd --help": [*DPSD, "--help"],
    "dpsd enrollment list": [*DPSD, "enrollment", "list"],
    "dpsd enrollment list -o json": [*DPSD, "enrollment", "list", "-o", "json"],
    "dpsd enrollment show bench-1": [*DPSD, "enrollment", "show", "bench-1"],
}
BARRED = ("dpsd --help", "dpsd enrollment list")


def _environment(data_dir: Path, first_on_path: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPSD_")}
    # Compiled files are written (by the unmeasured first run) and used, as for an
    # installed dpsd: a PYTHONDONTWRITEBYTECODE in the environment would have every run
    # compile dpsd's own modules again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["DPSD_DATA_DIR"] = str(data_dir)
    if first_on_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            path for path in (first_on_path, env.get("PYTHONPATH")) if path
        )
    return env


Runs = dict[str, tuple[list[str], dict[str, str]]]
"""What to run under each name: the command and its environment."""


def runs_of(data_dir: Path, before: str | None) -> Runs:
    now = _environment(data_dir)
    runs: Runs = {name: (command, now) for name, command in COMMANDS.items()}
    if before is not None:
        then = _environment(data_dir, before)
        for name, command in COMMANDS.items():
            if name.startswith("dpsd"):
                runs[f"before: {name}"] = (command, then)
    return runs


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds of one run, from spawning the process to its exit, and the CPU seconds
    (user and system) the process used: on a busy machine the wall time grows with the
    wait for a core, the CPU time much less."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if result.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed: {result.stderr.decode(errors='replace')}")
    return elapsed, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Times = dict[str, list[tuple[float, float]]]
"""(wall, CPU) seconds of each run, by name."""


def measure(rounds: int, runs: Runs) -> Times:
    times: Times = {name: [] for name in runs}
    for command, env in runs.values():  # one unmeasured run each: compiled files, caches
        run_once(command, env)
    for _ in range(rounds):
        for name, (command, env) in runs.items():
            times[name].append(run_once(command, env))
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summarise(times: Times) -> list[dict[str, Any]]:
    floor = statistics.median(wall for wall, _ in times["python -c pass"])
    rows = []
    for name, runs in times.items():
        values = [wall for wall, _ in runs]
        median = statistics.median(values)
        rows.append(
            {
                "command": name,
                "runs": len(values),
                "median_ms": round(median * 1000, 1),
                "p90_ms": round(p90(values) * 1000, 1),
                "over_floor": round(median / floor, 1),
                "meets_bar": median < BAR_SECONDS if name in BARRED else None,
                "over_floor_ms": round((median - floor) * 1000, 1),
                "cpu_median_ms": round(statistics.median(cpu for _, cpu in runs) * 1000, 1),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'command':40} {'median':>9} {'p90':>9} {'x floor':>8} {'- floor':>9} {'CPU':>9}"
        f"  bar (< {BAR_SECONDS} s)"
    )
    for row in rows:
        bar = {True: "met", False: "MISSED", None: ""}[row["meets_bar"]]
        print(
            f"{row['command']:40} {row['median_ms']:>7.1f}ms {row['p90_ms']:>7.1f}ms "
            f"{row['over_floor']:>8.1f} {row['over_floor_ms']:>7.1f}ms "
            f"{row['cpu_median_ms']:>7.1f}ms  {bar}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--before", help="also run the dpsd commands with this first on PYTHONPATH")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpsd-cli-bench-") as work:
        data_dir = Path(work) / "data"
        env = _environment(data_dir)
        try:
            server = start_dpsd(data_dir, Path(work))
            try:
                run_once([*DPSD, "enrollment", "create", "bench-1", "-o", "json"], env)
                rows = summarise(measure(arguments.runs, runs_of(data_dir, arguments.before)))
            finally:
                server.stop()
        except (BenchError, subprocess.TimeoutExpired) as error:
            print(f"cannot measure: {error}", file=sys.stderr)
            return 2
    if arguments.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0 if all(row["meets_bar"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
