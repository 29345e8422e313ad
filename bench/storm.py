"""A reconnect storm: a whole fleet comes back at once and registers over MQTT.

    .venv/bin/python bench/storm.py [--devices 20000] [--window 60] [--workers 5]
    .venv/bin/python bench/storm.py --postgres postgresql://postgres@127.0.0.1:5432/test

Starts ``dpsd serve`` on a fresh data dir (SQLite; or, with --postgres, --instances dpsd
processes sharing a scratch database made on that server, each with its own data dir, the
first one's tls/ copied into the others, each on its own port) with HTTPS, MQTT and metrics
on free ports of 127.0.0.1, links one hub and creates one symmetric-key enrollment group
(bench/registrations.py's). Then --workers client processes, each with its own loopback
source address (127.0.0.95 to .99, since dpsd admits at most 1000 connections per client
address) and an equal share of the devices, split evenly over the instances, run the storm:

    every device starts at its own moment, drawn uniformly over --window seconds (the same
    moments for every run: --seed), and does what a device does: a new TLS connection,
    CONNECT (a SAS token from its key derived from the group key), SUBSCRIBE, register;
    an answer 429 (throttled) makes it wait the retry-after it was told and register again
    on the same connection (a 5xx too, as the SDKs do); 202 makes it wait that retry-after
    and poll, until assigned.
    A connection dpsd refuses or that breaks, or a request unanswered within 30 s (the
    SDKs' timeout), makes it reconnect after a pause that doubles from 1 s up to 60 s, with
    jitter. A device not assigned by --deadline seconds after the window is lost.

While it runs, each dpsd's VmRSS is sampled (/proc) and its VmHWM read at the end. Then the
result is checked twice: through the service API (every registration state of the group,
paged, with dpsd's own client) and in the store itself (sqlite3 or asyncpg): one
registration state per device, each assigned, none twice; the register operations dpsd
started (more than the devices when some registered twice) are counted too. The report: how
many were assigned and lost, the time until the last was assigned (since the storm began),
the p50/p99 of each device's time to assignment (from its own start), the peak memory, the
429s answered (dpsd's metrics, and what devices saw), reconnects, and the CPU of dpsd, the
clients and the rest of the machine.

Exit status: 0 when every device was assigned and the checks agree, 1 when not, 2 when the
set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from device_bench import Failure
from dpsd.client import DpsServiceClient
from dpsd.mqtt.codec import MalformedPacket, Publish
from mqtt import Device
from registrations import GROUP_ID, HUB, _percentile, create_group, machine_busy_seconds
from service_api import (
    HOST,
    POLICY,
    SERVICE_HOST,
    BenchError,
    ServerProcess,
    _environment,
    _spawn,
    describe_code,
    describe_machine,
)

SOURCES = ("127.0.0.95", "127.0.0.96", "127.0.0.97", "127.0.0.98", "127.0.0.99")
REQUEST_TIMEOUT = 30.0  # the SDKs' bound on one request
FIRST_PAUSE, LONGEST_PAUSE = 1.0, 60.0  # reconnect back-off
REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/?$rid={rid}"
POLL_TOPIC = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
RESPONSE_PREFIX = "$dps/registrations/res/"
SAMPLE_EVERY = 0.5  # seconds between VmRSS samples
RETRY_AFTER_DEFAULT = 2  # what the SDKs wait when an answer names no retry-after


# --- one device (in a worker process) ----------------------------------------------------------


class Lost(Exception):
    """An answer that is not the one asked for: the device reconnects."""


class Refused(Exception):
    """A definite answer the device cannot go on from (not 202, 429 or assigned)."""


CONNECTION_FAILURES = (Lost, Failure, OSError, ssl.SSLError, TimeoutError, MalformedPacket)


@dataclass
class DeviceRecord:
    index: int
    began: float  # seconds since the storm began
    assigned: float | None = None
    throttled: int = 0
    server_errors: int = 0  # 5xx answers, retried as the SDKs do
    reconnects: int = 0
    polls: int = 0
    registers: int = 0
    error: str | None = None
    failures: dict[str, int] = field(default_factory=dict)  # why connections failed


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    sources: list[str]  # client addresses, taken in turn by the devices
    id_scope: str
    ca: str
    prefix: str
    devices: list[tuple[int, float]]  # (index, start offset)
    start_at: float  # time.time() of the storm's beginning
    give_up_at: float  # seconds after the beginning
    seed: int
    nice: int  # the client processes' niceness


async def answer(device: Device, rid: int) -> tuple[int, int, dict[str, Any]]:
    """The answer to request ``rid``: (status, retry-after, body)."""
    packet = await asyncio.wait_for(device.receive(), REQUEST_TIMEOUT)
    if not isinstance(packet, Publish) or not packet.topic.startswith(RESPONSE_PREFIX):
        raise Lost(f"expected an answer, got {packet}")
    status, _, query = packet.topic[len(RESPONSE_PREFIX) :].partition("/?")
    fields = dict(part.partition("=")[::2] for part in query.split("&"))
    if fields.get("$rid") != str(rid):
        raise Lost(f"an answer to another request: {packet.topic}")
    retry_after = int(fields.get("retry-after") or RETRY_AFTER_DEFAULT)
    return int(status), retry_after, json.loads(packet.payload)


async def provision(
    device: Device, record: DeviceRecord, registration_id: str, give_up: float
) -> float:
    """Register (again after each 429, as told), then poll as told until assigned: when
    (time.time()) it was."""
    rid = 0
    body = json.dumps({"registrationId": registration_id}).encode()
    while True:
        rid += 1
        record.registers += 1
        device.send(Publish(REGISTER_TOPIC.format(rid=rid), body))
        status, wait, started = await answer(device, rid)
        if status == 202:
            break
        if status < 429:  # the SDKs retry 429 and server errors, and give up on the rest
            raise Refused(f"register answered {status}: {started}")
        record.throttled += status == 429
        record.server_errors += status != 429
        if time.time() + wait > give_up:
            raise Lost("the deadline passed while the device was told to wait")
        await asyncio.sleep(wait)
    while True:
        if time.time() + wait > give_up:
            raise Lost("the deadline passed while the device was told to wait")
        await asyncio.sleep(wait)
        rid += 1
        record.polls += 1
        device.send(Publish(POLL_TOPIC.format(rid=rid, op=started["operationId"]), b" "))
        status, wait, polled = await answer(device, rid)
        if status == 200 and polled.get("status") == "assigned":
            return time.time()
        if status >= 429:
            record.throttled += status == 429
            record.server_errors += status != 429
        elif status != 202:
            raise Refused(f"poll answered {status}: {polled}")


@dataclass(frozen=True)
class Scope:
    """What bench/mqtt.py's Device.connect reads of its target."""

    id_scope: str


async def attempt(
    plan: Plan, context: ssl.SSLContext, record: DeviceRecord, registration_id: str
) -> float:
    """One connection: TLS, CONNECT, SUBSCRIBE, provision, DISCONNECT; when the device was
    assigned."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            plan.host,
            plan.port,
            ssl=context,
            server_hostname="localhost",
            local_addr=(plan.sources[record.index % len(plan.sources)], 0),
        ),
        REQUEST_TIMEOUT,
    )
    device = Device(reader, writer)
    try:
        connect = device.connect(Scope(plan.id_scope), registration_id)  # type: ignore[arg-type]
        await asyncio.wait_for(connect, REQUEST_TIMEOUT)
        give_up = plan.start_at + plan.give_up_at
        assigned = await provision(device, record, registration_id, give_up)
    except BaseException:
        device.abort()
        raise
    await device.leave()
    return assigned


async def device_life(
    plan: Plan, context: ssl.SSLContext, index: int, offset: float
) -> DeviceRecord:
    """A device from its moment in the storm until it is assigned, refused or gives up."""
    await asyncio.sleep(max(0.0, plan.start_at + offset - time.time()))
    record = DeviceRecord(index, time.time() - plan.start_at)
    registration_id = f"{plan.prefix}-{index}"
    jitter = random.Random(plan.seed * 1_000_003 + index)
    pause = FIRST_PAUSE
    while True:
        try:
            assigned = await attempt(plan, context, record, registration_id)
        except Refused as refused:
            record.error = str(refused)
            return record
        except CONNECTION_FAILURES as error:
            record.reconnects += 1
            record.error = f"{type(error).__name__}: {error}"
            kind = _failure_kind(error)
            record.failures[kind] = record.failures.get(kind, 0) + 1
        else:
            record.assigned = assigned - plan.start_at
            record.error = None
            return record
        if time.time() - plan.start_at + pause > plan.give_up_at:
            return record
        await asyncio.sleep(pause * (0.5 + jitter.random()))
        pause = min(LONGEST_PAUSE, pause * 2)


def _failure_kind(error: BaseException) -> str:
    """What went wrong, without the details that differ per device."""
    text = str(error)
    if isinstance(error, Failure | Lost):
        text = text.split(":")[0].split(" ")[0]
    return f"{type(error).__name__}: {text[:60]}" if text else type(error).__name__


async def run_worker(plan: Plan) -> list[DeviceRecord]:
    context = ssl.create_default_context(cafile=plan.ca)
    lives = [device_life(plan, context, index, offset) for index, offset in plan.devices]
    return list(await asyncio.gather(*lives))


def worker_main(plan_file: str) -> int:
    plan = Plan(**json.loads(Path(plan_file).read_text()))
    os.nice(plan.nice)
    records = asyncio.run(run_worker(plan))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "records": [asdict(record) for record in records],
                "cpu": usage.ru_utime + usage.ru_stime,
            }
        ),
        flush=True,
    )
    return 0


# --- the servers -------------------------------------------------------------------------------


@dataclass
class Instance:
    server: ServerProcess
    data_dir: Path
    mqtt_port: int
    metrics_url: str
    rss_before_kb: int = 0
    rss_samples: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.server.process.pid


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def dpsd_command(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dpsd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"dpsd {' '.join(args[:2])} failed:\n{result.stdout}{result.stderr}")
    return result


def store_args(database: str | None) -> list[str]:
    return ["--database", database] if database else []


def start_instance(
    data_dir: Path, logs: Path, name: str, database: str | None, arguments: argparse.Namespace
) -> Instance:
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir)]
    command += ["--host", HOST, "--https-port", "0", "--mqtt-port", "0", "--amqp-port", "-1"]
    command += ["--metrics-port", "0", "--retry-after", str(arguments.retry_after)]
    command += ["--log-level", arguments.log_level, *store_args(database)]
    if arguments.max_in_flight is not None:
        command += ["--max-registrations-in-flight", str(arguments.max_in_flight)]
    if arguments.registration_rate:
        command += ["--registration-rate", arguments.registration_rate]
    ready = data_dir / "endpoints.json"
    server = _spawn(name, command, ready, logs / f"{name}.log")
    recorded = json.loads(ready.read_text())
    mqtt_port = int(str(recorded["mqtt"]).rsplit(":", 1)[1])
    return Instance(server, data_dir, mqtt_port, str(recorded["metrics"]))


def start_instances(
    work: Path, database: str | None, arguments: argparse.Namespace
) -> tuple[list[Instance], dict[str, Any]]:
    """The dpsd processes, the first one's data dir set up (store, hub, CA) and its tls/
    copied into the others'; and ``dpsd info --json`` of the first."""
    first = work / "dpsd-1"
    info = json.loads(
        dpsd_command("info", "--json", "--data-dir", str(first), *store_args(database)).stdout
    )
    dpsd_command("hub", "add", HUB, "--data-dir", str(first), *store_args(database))
    instances: list[Instance] = []
    try:
        for number in range(1, arguments.instances + 1):
            data_dir = work / f"dpsd-{number}"
            if number > 1:
                data_dir.mkdir(mode=0o700)
                shutil.copytree(first / "tls", data_dir / "tls")
            instances.append(start_instance(data_dir, work, f"dpsd-{number}", database, arguments))
    except BaseException:
        for instance in instances:
            instance.server.stop()
        raise
    return instances, info


class Sampler:
    """Samples each dpsd's VmRSS every SAMPLE_EVERY seconds in a thread, until stopped."""

    def __init__(self, instances: list[Instance]) -> None:
        self._instances = instances
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            for instance in self._instances:
                instance.rss_samples.append(proc_status_kb(instance.pid, "VmRSS"))


# --- PostgreSQL scratch database ---------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


# --- the storm ---------------------------------------------------------------------------------


def plans(
    arguments: argparse.Namespace, instances: list[Instance], info: dict[str, Any], ca: Path
) -> list[Plan]:
    rng = random.Random(arguments.seed)
    offsets = [rng.uniform(0, arguments.window) for _ in range(arguments.devices)]
    start_at = time.time() + arguments.lead_time
    made = []
    for worker in range(arguments.workers):
        instance = instances[worker % len(instances)]
        mine = [
            (index, offsets[index]) for index in range(worker, arguments.devices, arguments.workers)
        ]
        made.append(
            Plan(
                host=HOST,
                port=instance.mqtt_port,
                sources=arguments.sources,
                id_scope=info["idScope"],
                ca=str(ca),
                prefix=arguments.prefix,
                devices=mine,
                start_at=start_at,
                give_up_at=arguments.window + arguments.deadline,
                seed=arguments.seed,
                nice=arguments.client_nice,
            )
        )
    return made


def run_storm(plans_: list[Plan], work: Path, timeout: float) -> tuple[list[DeviceRecord], float]:
    """Every worker process's device records and their CPU seconds."""
    workers = []
    for number, plan in enumerate(plans_):
        path = work / f"plan-{number}.json"
        path.write_text(json.dumps(asdict(plan)))
        command = [sys.executable, __file__, "--worker", str(path)]
        workers.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        )
    records: list[DeviceRecord] = []
    cpu = 0.0
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=timeout)
            if worker.returncode != 0:
                raise BenchError(f"a client worker exited with {worker.returncode}:\n{stderr}")
            done = json.loads(stdout)
            records += [DeviceRecord(**record) for record in done["records"]]
            cpu += done["cpu"]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return records, cpu


# --- the checks --------------------------------------------------------------------------------


def scrape(instance: Instance) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(instance.metrics_url, timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(value for (metric, _), value in samples.items() if metric == name)


def states_through_the_api(key: str, port: int, ca: Path) -> list[dict[str, Any]]:
    connection_string = (
        f"HostName={SERVICE_HOST}:{port};SharedAccessKeyName={POLICY};SharedAccessKey={key}"
    )
    with DpsServiceClient.from_connection_string(
        connection_string, verify=str(ca), timeout=120
    ) as client:
        return [dict(state) for state in client.registrations.query(GROUP_ID, page_size=1000)]


STORE_COUNTS = (
    "SELECT COUNT(*), COUNT(DISTINCT LOWER(registration_id)), "
    "SUM(CASE WHEN status = 'assigned' THEN 1 ELSE 0 END) FROM registration_states",
    "SELECT COUNT(*) FROM registration_operations",
)


def store_counts(work: Path, database: str | None) -> tuple[int, int, int, int]:
    """Rows, distinct registration ids and assigned rows of registration_states; rows of
    registration_operations (the register operations dpsd started)."""
    if database is None:
        with sqlite3.connect(work / "dpsd-1" / "dpsd.db") as connection:
            states = connection.execute(STORE_COUNTS[0]).fetchone()
            operations = connection.execute(STORE_COUNTS[1]).fetchone()
    else:
        states, operations = asyncio.run(_postgres_counts(database))
    return int(states[0]), int(states[1]), int(states[2] or 0), int(operations[0])


async def _postgres_counts(url: str) -> tuple[Any, Any]:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchrow(STORE_COUNTS[0]), await connection.fetchrow(
            STORE_COUNTS[1]
        )
    finally:
        await connection.close()


# --- report ------------------------------------------------------------------------------------


@dataclass
class Result:
    devices: int
    assigned: int
    lost: int
    refused: int
    last_assigned_s: float
    p50_s: float
    p99_s: float
    max_s: float
    throttled_seen: int
    server_errors: int
    throttled_counted: float
    reconnects: int
    registers: int
    polls: int
    api_states: int
    api_assigned: int
    store_states: int
    store_distinct: int
    store_assigned: int
    store_operations: int
    peak_rss_kb: list[int]
    hwm_kb: list[int]
    rss_before_kb: list[int]
    server_cpu_s: list[float]
    client_cpu_s: float
    machine_cpu_s: float
    storm_s: float
    errors: list[str]
    failures: dict[str, int]

    @property
    def checks_pass(self) -> bool:
        ids = self.devices
        return (
            self.assigned == ids
            and self.api_states == self.api_assigned == ids
            and self.store_states == self.store_distinct == self.store_assigned == ids
        )


def summarise(records: list[DeviceRecord]) -> dict[str, Any]:
    assigned = [record for record in records if record.assigned is not None]
    times = sorted(record.assigned - record.began for record in assigned)  # type: ignore[operator]
    errors = [record.error for record in records if record.assigned is None and record.error]
    return {
        "assigned": len(assigned),
        "lost": sum(1 for record in records if record.assigned is None and not _refused(record)),
        "refused": sum(1 for record in records if _refused(record)),
        "last_assigned_s": max((record.assigned for record in assigned), default=0.0),  # type: ignore[type-var]
        "p50_s": _percentile(times, 0.50),
        "p99_s": _percentile(times, 0.99),
        "max_s": times[-1] if times else 0.0,
        "throttled_seen": sum(record.throttled for record in records),
        "server_errors": sum(record.server_errors for record in records),
        "reconnects": sum(record.reconnects for record in records),
        "registers": sum(record.registers for record in records),
        "polls": sum(record.polls for record in records),
        "errors": errors[:5],
        "failures": _failure_counts(records),
    }


def _failure_counts(records: list[DeviceRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        for kind, count in record.failures.items():
            counts[kind] = counts.get(kind, 0) + count
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _refused(record: DeviceRecord) -> bool:
    return record.assigned is None and bool(record.error) and "answered" in (record.error or "")


def report(result: Result, arguments: argparse.Namespace, store: str) -> list[str]:
    mb = [f"{kb / 1024:.0f}" for kb in result.hwm_kb]
    peak = [f"{kb / 1024:.0f}" for kb in result.peak_rss_kb]
    before = [f"{kb / 1024:.0f}" for kb in result.rss_before_kb]
    cpu = ", ".join(f"{seconds:.1f}" for seconds in result.server_cpu_s)
    return [
        f"storm: {result.devices} devices over {arguments.window:g} s, {store}, "
        f"{arguments.instances} dpsd, {arguments.workers} client processes",
        f"assigned {result.assigned}, lost {result.lost}, refused {result.refused}",
        f"last assigned {result.last_assigned_s:.1f} s after the storm began",
        f"time to assignment: p50 {result.p50_s:.2f} s, p99 {result.p99_s:.2f} s, "
        f"max {result.max_s:.2f} s",
        f"429s answered: {result.throttled_counted:.0f} (dpsd's metrics), "
        f"{result.throttled_seen} seen by devices; 5xx {result.server_errors}; "
        f"reconnects {result.reconnects}; "
        f"registers sent {result.registers}, polls {result.polls}",
        "why connections failed: "
        + (", ".join(f"{kind} ({count})" for kind, count in result.failures.items()) or "-"),
        f"service API: {result.api_states} states of the group, {result.api_assigned} assigned",
        f"store: {result.store_states} states, {result.store_distinct} distinct ids, "
        f"{result.store_assigned} assigned, {result.store_operations} register operations",
        f"dpsd memory (MB): before the storm {', '.join(before)}; peak VmRSS sampled "
        f"{', '.join(peak)}; VmHWM {', '.join(mb)}",
        f"CPU seconds over {result.storm_s:.1f} s: dpsd {cpu}; clients "
        f"{result.client_cpu_s:.1f}; whole machine {result.machine_cpu_s:.1f}",
        "checks: "
        + ("all assigned once, the API and the store agree" if result.checks_pass else "FAILED"),
    ]


# --- main --------------------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A reconnect storm: devices of one group register over MQTT at once.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds devices arrive over")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help="client addresses, taken in turn"
    )
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds after the window")
    parser.add_argument("--retry-after", type=int, default=3, help="dpsd serve --retry-after")
    parser.add_argument("--max-in-flight", type=int, help="dpsd --max-registrations-in-flight")
    parser.add_argument("--registration-rate", help="dpsd --registration-rate COUNT/SECONDS")
    parser.add_argument("--log-level", default="info", help="dpsd serve --log-level")
    parser.add_argument("--postgres", help="an admin URL: two dpsd share a scratch database")
    parser.add_argument("--instances", type=int, help="dpsd processes (default 1; 2 on --postgres)")
    parser.add_argument("--lead-time", type=float, default=3.0, help="seconds to start workers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--client-nice", type=int, default=0, help="niceness of the client processes"
    )
    parser.add_argument("--work-dir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    arguments = parser.parse_args(argv)
    arguments.instances = arguments.instances or (2 if arguments.postgres else 1)
    arguments.sources = [address for address in arguments.sources.split(",") if address]
    arguments.prefix = f"storm-{uuid.uuid4().hex[:6]}"
    if not 1 <= arguments.devices <= 200_000 or not 1 <= arguments.workers <= 32:
        parser.error("--devices within [1, 200000], --workers within [1, 32]")
    if arguments.instances > 1 and not arguments.postgres:
        parser.error("several instances share a store only on --postgres")
    if not 0 <= arguments.window <= 3600 or not 0 < arguments.deadline <= 3600:
        parser.error("--window within [0, 3600], --deadline within (0, 3600]")
    return arguments


def raise_open_files(needed: int) -> None:
    """Each connected device holds a socket here and in dpsd, which inherits the limit; as
    root the hard limit may be raised too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(arguments: argparse.Namespace) -> int:
    temporary = arguments.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="dpsd-storm-")) if temporary else arguments.work_dir
    work.mkdir(parents=True, exist_ok=True)
    database = None
    if arguments.postgres:
        name = f"dpsd_storm_{uuid.uuid4().hex[:8]}"
        asyncio.run(_admin(arguments.postgres, f'CREATE DATABASE "{name}"'))
        database = with_database(arguments.postgres, name)
    status = 2
    try:
        status = _run_in(work, database, arguments)
    finally:
        if database is not None:
            name = urlsplit(database).path.lstrip("/")
            asyncio.run(
                _admin(arguments.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )
        if temporary and status == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (server logs in it)", file=sys.stderr)
    return status


def _run_in(work: Path, database: str | None, arguments: argparse.Namespace) -> int:
    raise_open_files(2 * arguments.devices + 4096)
    store = "PostgreSQL" if database else "SQLite"
    print(f"code: {describe_code()}")
    print(f"machine: {describe_machine()}, {ssl.OPENSSL_VERSION}", flush=True)
    instances, info = start_instances(work, database, arguments)
    try:
        ca = Path(info["caCertificatePath"])
        key = info["serviceConnectionString"].rsplit("SharedAccessKey=", 1)[1]
        create_group(instances[0].server, key, ca)
        for instance in instances:
            instance.rss_before_kb = proc_status_kb(instance.pid, "VmRSS")
        made = plans(arguments, instances, info, ca)
        cpu_before = [instance.server.cpu_seconds() for instance in instances]
        machine_before = machine_busy_seconds()
        began = time.monotonic()
        with Sampler(instances):
            records, client_cpu = run_storm(made, work, arguments.window + arguments.deadline + 120)
        storm_s = time.monotonic() - began
        server_cpu = [
            i.server.cpu_seconds() - b for i, b in zip(instances, cpu_before, strict=True)
        ]
        machine_cpu = machine_busy_seconds() - machine_before
        hwm = [proc_status_kb(instance.pid, "VmHWM") for instance in instances]
        counted = sum(
            metric_sum(scrape(instance), "dpsd_device_requests_throttled_total")
            for instance in instances
        )
        states = states_through_the_api(key, instances[-1].server.port, ca)
        counts = store_counts(work, database)
    finally:
        for instance in instances:
            instance.server.stop()
    result = Result(
        devices=arguments.devices,
        **summarise(records),
        throttled_counted=counted,
        api_states=len(states),
        api_assigned=sum(1 for state in states if state.get("status") == "assigned"),
        store_states=counts[0],
        store_distinct=counts[1],
        store_assigned=counts[2],
        store_operations=counts[3],
        peak_rss_kb=[max(instance.rss_samples, default=0) for instance in instances],
        hwm_kb=hwm,
        rss_before_kb=[instance.rss_before_kb for instance in instances],
        server_cpu_s=server_cpu,
        client_cpu_s=client_cpu,
        machine_cpu_s=machine_cpu,
        storm_s=storm_s,
    )
    print()
    print("\n".join(report(result, arguments, store)))
    for error in result.errors:
        print(f"  unassigned: {error}", file=sys.stderr)
    if arguments.json is not None:
        document = {"arguments": {k: str(v) for k, v in vars(arguments).items()}}
        arguments.json.write_text(json.dumps(document | {"result": asdict(result)}, indent=2))
    return 0 if result.checks_pass else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    try:
        return run(parse_arguments(argv))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
