"""Complete device registrations over HTTPS per second with ``dpsd serve --workers N``, next
to ``--workers 1`` and to two independent single-process servers, in one run.

    .venv/bin/python bench/workers.py [--workers 2] [--devices 3000] [--concurrency 64]
        [--clients 2] [--rounds 3] [--database postgresql://...]
        [--server-cpus 1-3 --client-cpus 0]

Starts, each on a fresh data dir (HTTPS on 127.0.0.1, port 0; MQTT and AMQP off;
``--retry-after 1``), with one linked IoT hub and one symmetric-key enrollment group:

    workers 1    ``dpsd serve`` as one process;
    workers N    ``dpsd serve --workers N``: a supervisor and N workers on the same sockets
                 and store;
    N servers    N independent ``dpsd serve`` processes, each with a data dir (and, on
                 SQLite, a store) of its own, each taking 1/N of the client processes: the
                 best N processes can do here, with nothing shared (with --database, all
                 share one scratch database on that PostgreSQL server, made for the run
                 and dropped after it, as dpsd instances sharing a store do).

All of them run throughout; each round measures the three in turn (the order rotating from
round to round), with the client processes of bench/registrations.py (``--worker``): each
simulated device opens a new TLS connection, registers, polls its operation once, checks
"assigned" and closes. For each configuration the output gives the median over rounds of
the rate, p50/p99 latency and the cores the servers (the supervisor and its workers
summed) and the clients used, then the ratios: workers N / workers 1, workers N / N servers
(the target: at least 0.9) and N servers / workers 1.

--server-cpus and --client-cpus pin the servers and the client processes to CPU lists
(``taskset -c``), to see how the workers scale with the cores they are given.

Exit status: 0 when every registration was assigned, 1 when some failed or hit --timeout,
2 when a server did not start or the set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from registrations import (
    HUB,
    WORKER_READY_TIMEOUT,
    WorkerPlan,
    _expect_line,
    _percentile,
    _spread,
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

CLIENT = Path(__file__).with_name("registrations.py")
_group_created = False


@dataclass(frozen=True)
class Target:
    """One dpsd server a share of the clients talks to."""

    server: ServerProcess
    id_scope: str
    ca: Path

    def cpu_seconds(self) -> float:
        """The server's CPU so far: its own and, with workers, theirs."""
        recorded = json.loads((self.server.log_path.parent / "data" / "endpoints.json").read_text())
        pids = [self.server.process.pid, *recorded.get("workers", [])]
        return sum(_process_cpu_seconds(pid) for pid in pids)


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    configuration: str
    round: int
    completed: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_seconds: float
    client_cpu_seconds: float
    machine_cpu_seconds: float
    timed_out: bool

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def other_cores(self) -> float:
        """Cores busy outside the servers and the clients (other processes, the kernel)."""
        other = self.machine_cpu_seconds - self.server_cpu_seconds - self.client_cpu_seconds
        return max(0.0, other) / self.seconds if self.seconds else 0.0

    @property
    def server_ms_per_registration(self) -> float:
        return 1000 * self.server_cpu_seconds / self.completed if self.completed else 0.0


def _pinned(cpus: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def start_server(
    folder: Path, workers: int, arguments: argparse.Namespace, key: str | None = None
) -> Target:
    """A dpsd on a fresh data dir in ``folder``, with the hub and the group."""
    folder.mkdir(parents=True)
    data_dir = folder / "data"
    store = ["--database", arguments.database] if arguments.database else []
    if store:
        info = _info_on(data_dir, store)
    else:
        info = dpsd_info(data_dir)
        link_hubs(data_dir, [HUB])
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir), *store]
    command += ["--host", HOST, "--https-port", "0", "--mqtt-port", "-1", "--amqp-port", "-1"]
    command += ["--retry-after", "1", "--log-level", arguments.log_level]
    command += ["--workers", str(workers)]
    server = _spawn(
        f"dpsd --workers {workers}",
        _pinned(arguments.server_cpus, command),
        data_dir / "endpoints.json",
        folder / "dpsd.log",
    )
    ca = Path(info["caCertificatePath"])
    global _group_created  # one group per store: a shared PostgreSQL store has it already
    try:
        if not store or not _group_created:
            create_group(server, key or shared_access_key(info["serviceConnectionString"]), ca)
            _group_created = True
    except BaseException:
        server.stop()
        raise
    return Target(server, info["idScope"], ca)


def _info_on(data_dir: Path, store: list[str]) -> dict[str, Any]:
    """``dpsd info`` on a shared PostgreSQL store, and the hub linked there (once is enough;
    again is refused as a duplicate, which is fine)."""
    command = [sys.executable, "-m", "dpsd", "info", "--json", "--data-dir", str(data_dir)]
    done = subprocess.run([*command, *store], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"dpsd info failed: {done.stderr}")
    hub = [sys.executable, "-m", "dpsd", "hub", "add", HUB, "--data-dir", str(data_dir), *store]
    subprocess.run(hub, capture_output=True, check=False)
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def run_configuration(
    name: str, targets: list[Target], round_number: int, count: int, arguments: argparse.Namespace
) -> Result:
    """The client processes, spread over ``targets``, released together."""
    clients: list[subprocess.Popen[str]] = []
    try:
        shares = _spread(count, arguments.clients)
        lanes = _spread(arguments.concurrency, arguments.clients)
        for index, (share, lane) in enumerate(zip(shares, lanes, strict=True)):
            target = targets[index % len(targets)]
            plan = WorkerPlan(
                phase="registrations",
                client="raw",
                host=HOST,
                port=target.server.port,
                ca=str(target.ca),
                id_scope=target.id_scope,
                prefix=f"{name.replace(' ', '')}-r{round_number}-c{index}",
                count=share,
                concurrency=max(1, lane),
                timeout=arguments.timeout,
            )
            command = [sys.executable, str(CLIENT), "--worker", json.dumps(asdict(plan))]
            clients.append(
                subprocess.Popen(
                    _pinned(arguments.client_cpus, command),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for client in clients:
            _expect_line(client, WORKER_READY_TIMEOUT, "ready")
        server_before = sum(target.cpu_seconds() for target in targets)
        machine_before = machine_busy_seconds()
        for client in clients:
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        outcomes = [
            json.loads(_expect_line(client, arguments.timeout + 60, None)) for client in clients
        ]
        server_cpu = sum(target.cpu_seconds() for target in targets) - server_before
        machine_cpu = machine_busy_seconds() - machine_before
    finally:
        for client in clients:
            if client.poll() is None:
                try:
                    client.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.wait(timeout=10)
    for outcome in outcomes:
        for error in outcome["errors"]:
            print(f"    {name} error: {error}", file=sys.stderr)
    latencies = sorted(value for outcome in outcomes for value in outcome["latencies"])
    return Result(
        configuration=name,
        round=round_number,
        completed=len(latencies),
        failed=sum(outcome["failed"] for outcome in outcomes),
        seconds=max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes),
        p50_ms=1000 * _percentile(latencies, 0.50),
        p99_ms=1000 * _percentile(latencies, 0.99),
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=sum(outcome["cpu"] for outcome in outcomes),
        machine_cpu_seconds=machine_cpu,
        timed_out=any(outcome["timed_out"] for outcome in outcomes),
    )


def report(results: list[Result], names: list[str], workers: int) -> list[str]:
    lines = [
        f"{'configuration':<14} {'reg/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv cores':>9} {'cli cores':>9} {'srv ms/reg':>10} {'failed':>6}   "
        "(medians over rounds)"
    ]
    rates: dict[str, float] = {}
    for name in names:
        own = [result for result in results if result.configuration == name]
        rates[name] = statistics.median(result.rate for result in own)

        def median(values: list[float]) -> float:
            return statistics.median(values) if values else 0.0

        lines.append(
            f"{name:<14} {rates[name]:8.0f} {median([r.p50_ms for r in own]):8.1f} "
            f"{median([r.p99_ms for r in own]):8.1f} "
            f"{median([r.server_cpu_seconds / r.seconds for r in own]):9.2f} "
            f"{median([r.client_cpu_seconds / r.seconds for r in own]):9.2f} "
            f"{median([r.server_ms_per_registration for r in own]):10.2f} "
            f"{sum(r.failed for r in own):6d}"
        )
    one, many, separate = names
    lines.append("")
    lines.append(f"workers {workers} / workers 1:   {rates[many] / rates[one]:.2f}")
    lines.append(f"workers {workers} / {separate}:   {rates[many] / rates[separate]:.2f}")
    lines.append(f"{separate} / workers 1:   {rates[separate] / rates[one]:.2f}")
    per_round = []
    for round_number in sorted({result.round for result in results}):
        by_name = {r.configuration: r.rate for r in results if r.round == round_number}
        per_round.append(by_name[many] / by_name[separate])
        lines.append(
            f"round {round_number}: workers {workers} / {separate} "
            f"{by_name[many] / by_name[separate]:.2f}, workers {workers} / workers 1 "
            f"{by_name[many] / by_name[one]:.2f}"
        )
    lines.append(
        f"median of the rounds' workers {workers} / {separate}: {statistics.median(per_round):.2f}"
    )
    return lines


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=2, help="dpsd serve --workers N")
    parser.add_argument("--devices", type=int, default=3000, help="registrations per measure")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight, all clients")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--rounds", type=int, default=3, help="measures of each configuration")
    parser.add_argument("--warmup", type=int, default=300, help="registrations before round 1")
    parser.add_argument("--timeout", type=float, default=120, help="seconds at most per measure")
    parser.add_argument(
        "--database",
        help="a PostgreSQL server (URL) on which a scratch database every server shares is "
        "made and dropped (else SQLite)",
    )
    parser.add_argument("--log-level", default="warning", help="dpsd serve --log-level")
    parser.add_argument("--server-cpus", help="taskset -c CPU list for the servers")
    parser.add_argument("--client-cpus", help="taskset -c CPU list for the clients")
    parser.add_argument("--work-dir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    arguments = parser.parse_args(argv)
    if not 2 <= arguments.workers <= 16:
        parser.error("--workers must be 2 to 16")
    if arguments.clients % arguments.workers:
        parser.error("--clients must be a multiple of --workers (each server takes a share)")
    if min(arguments.devices, arguments.concurrency, arguments.rounds) <= 0:
        parser.error("--devices, --concurrency and --rounds must be positive")
    return arguments


@contextlib.contextmanager
def scratch_database(url: str | None) -> Iterator[str | None]:
    """A new database on the PostgreSQL server ``url`` names, dropped afterwards (the
    servers create dpsd's tables in it); None without a URL."""
    if url is None:
        yield None
        return
    import asyncpg

    name = f"dpsd_bench_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield str(make_url(url).set(database=name).render_as_string(hide_password=False))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(arguments: argparse.Namespace) -> int:
    temporary = arguments.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="dpsd-bench-workers-")) if temporary else arguments.work_dir
    work.mkdir(parents=True, exist_ok=True)
    status = 2
    try:
        with scratch_database(arguments.database) as database:
            arguments.database = database
            status = _run_in(work.resolve(), arguments)
    finally:
        if temporary and status == 0:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            print(f"kept {work} (server logs in it)", file=sys.stderr)
    return status


def _run_in(work: Path, arguments: argparse.Namespace) -> int:
    workers = arguments.workers
    names = ["workers 1", f"workers {workers}", f"{workers} servers"]
    print(f"code: {describe_code()}")
    print(f"machine: {describe_machine()}")
    print(
        f"load: {arguments.clients} client processes (asyncio, raw HTTP/1.1 over TLS), "
        f"{arguments.concurrency} in flight, {arguments.devices} registrations per measure, "
        f"{arguments.rounds} rounds; store: {'PostgreSQL' if arguments.database else 'SQLite'}; "
        f"servers on CPUs {arguments.server_cpus or 'any'}, clients on "
        f"{arguments.client_cpus or 'any'}; work dir {work}",
        flush=True,
    )
    targets: dict[str, list[Target]] = {}
    results: list[Result] = []
    try:
        targets[names[0]] = [start_server(work / "one", 1, arguments)]
        targets[names[1]] = [start_server(work / "workers", workers, arguments)]
        targets[names[2]] = [
            start_server(work / f"server-{index}", 1, arguments) for index in range(workers)
        ]
        for name in names:
            run_configuration(name, targets[name], 0, arguments.warmup, arguments)
        for round_number in range(1, arguments.rounds + 1):
            shift = (round_number - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                result = run_configuration(
                    name, targets[name], round_number, arguments.devices, arguments
                )
                print(
                    f"  round {round_number} {name:<12} {result.rate:7.0f}/s  "
                    f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
                    f"srv {result.server_cpu_seconds / result.seconds:.2f} "
                    f"cli {result.client_cpu_seconds / result.seconds:.2f} "
                    f"other {result.other_cores:.2f} cores  "
                    f"srv {result.server_ms_per_registration:.2f} ms/reg  "
                    f"failed {result.failed}",
                    flush=True,
                )
                results.append(result)
    finally:
        for group in targets.values():
            for target in group:
                target.server.stop()
    print()
    print("\n".join(report(results, names, workers)))
    if arguments.json is not None:
        write_report(arguments.json, arguments, results)
    if any(result.failed or result.timed_out for result in results):
        print("some registrations failed or a measure hit --timeout", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        return run(arguments)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
