"""A million enrollments: import time, server memory, and latency at 1,000 against 1,000,000.

    .venv/bin/python bench/fleet_scale.py [--count 1000000] [--small 1000] [--samples 2000]

Writes a fleet file of --count symmetric-key individual enrollments with their keys (what
``dpsd export`` writes), then:

1. starts ``dpsd serve`` on a fresh data dir (SQLite, HTTPS on 127.0.0.1, port 0, MQTT and
   AMQP off), imports the first --small records with ``dpsd import`` and measures latency;
2. starts another fresh ``dpsd serve``, imports all --count records with ``dpsd import``
   (timed: the headline figure), measures latency the same way, then times ``dpsd export``
   of everything (which reads each enrollment's keys with one request).

Latency is measured by one sequential client on a keep-alive HTTPS connection (httpx), for:
GET /enrollments/{random id}; PUT /enrollments/{random id} with If-Match: * (an update);
PUT of a new id (a create); POST /enrollments/query pages of 100, walked with the
continuation, starting at the first page; and a filtered query page
(WHERE provisioningStatus = 'disabled', one record in 100 is disabled). Each figure is the
median and 99th percentile of --samples requests. Server memory is read from
/proc/PID/status: VmRSS after the measurements and VmHWM (the peak) over the server's life.

The bar (issue "Operator tooling"): import under 5 minutes on a 2-core machine; GET and PUT
at --count within 1.5x of --small; server memory that does not grow with the enrollments.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service_api import (
    API_VERSION,
    HOST,
    POLICY,
    SERVICE_HOST,
    BenchError,
    ServerProcess,
    _environment,
    _spawn,
    describe_code,
    describe_machine,
    dpsd_info,
    sas_token,
    shared_access_key,
)

QUERY_PAGE = 100
DISABLED_EVERY = 100
IMPORT_CONCURRENCY = 8


def write_fleet(path: Path, count: int) -> None:
    """``count`` enrollment lines as ``dpsd export`` writes them, 32-byte keys included."""
    randomness = random.Random(20261125)  # the same fleet every run

    def key() -> str:
        return base64.b64encode(randomness.randbytes(32)).decode()

    with path.open("w") as fleet:
        for index in range(count):
            record = {
                "registrationId": f"device-{index:07d}",
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {"primaryKey": key(), "secondaryKey": key()},
                },
                "provisioningStatus": "disabled" if index % DISABLED_EVERY == 0 else "enabled",
                "capabilities": {"iotEdge": False},
            }
            line = {"kind": "enrollment", "record": record}
            fleet.write(json.dumps(line, separators=(",", ":")) + "\n")


def head(source: Path, target: Path, count: int) -> None:
    with source.open() as lines, target.open("w") as out:
        for _, line in zip(range(count), lines, strict=False):
            out.write(line)


def start_server(data_dir: Path, logs: Path, name: str) -> ServerProcess:
    dpsd_info(data_dir)
    command = [sys.executable, "-m", "dpsd", "serve", "--data-dir", str(data_dir)]
    command += ["--host", HOST, "--https-port", "0", "--mqtt-port", "-1", "--amqp-port", "-1"]
    return _spawn(name, command, data_dir / "endpoints.json", logs / f"{name}.log")


def memory_kb(server: ServerProcess) -> dict[str, int]:
    status = Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


@dataclass(frozen=True)
class Import:
    seconds: float
    summary: dict[str, Any]
    export_seconds: float = 0.0


def _client_environment(server: ServerProcess, info: dict[str, Any]) -> dict[str, str]:
    return {
        **_environment(),
        "DPSD_CONNECTION_STRING": _connection_string(info, server.port),
        "DPSD_CA_FILE": info["caCertificatePath"],
    }


def _timed_command(
    server: ServerProcess, info: dict[str, Any], *args: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``dpsd ARGS`` against the server, and the seconds it took; a failure raises."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dpsd", *args],
        capture_output=True,
        text=True,
        env=_client_environment(server, info),
        check=False,
        timeout=3600,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"dpsd {args[0]} failed:\n{result.stdout}{result.stderr}")
    return seconds, result


def run_export(server: ServerProcess, info: dict[str, Any], target: Path, count: int) -> float:
    """Seconds ``dpsd export`` takes to write every enrollment, keys included."""
    seconds, _ = _timed_command(server, info, "export", str(target))
    with target.open() as lines:
        written = sum(1 for _ in lines)
    if written < count:
        raise BenchError(f"dpsd export wrote {written} records, expected at least {count}")
    return seconds


def run_import(server: ServerProcess, info: dict[str, Any], fleet: Path) -> Import:
    concurrency = ("--concurrency", str(IMPORT_CONCURRENCY))
    seconds, result = _timed_command(server, info, "import", str(fleet), "-o", "json", *concurrency)
    return Import(seconds, json.loads(result.stdout))


def _connection_string(info: dict[str, Any], port: int) -> str:
    key = shared_access_key(info["serviceConnectionString"])
    return f"HostName={SERVICE_HOST}:{port};SharedAccessKeyName={POLICY};SharedAccessKey={key}"


# --- latency ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p99_ms: float


def _latency(samples: list[float]) -> Latency:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Latency(statistics.median(ordered) * 1000, p99 * 1000)


def _timed(samples: int, request: Callable[[int], httpx.Response], expected: int) -> Latency:
    times: list[float] = []
    for index in range(samples):
        started = time.perf_counter()
        response = request(index)
        times.append(time.perf_counter() - started)
        if response.status_code != expected:
            raise BenchError(f"{response.request.url}: {response.status_code} {response.text}")
    return _latency(times)


def _body(registration_id: str) -> bytes:
    record = {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}}
    return json.dumps(record).encode()


def measure(
    server: ServerProcess, info: dict[str, Any], count: int, samples: int
) -> dict[str, Latency]:
    key = shared_access_key(info["serviceConnectionString"])
    headers = {
        "Authorization": sas_token(SERVICE_HOST, POLICY, key, 3600),
        "Content-Type": "application/json",
        "Host": f"{SERVICE_HOST}:{server.port}",
    }
    chooser = random.Random(count)
    ids = [f"device-{chooser.randrange(count):07d}" for _ in range(samples)]
    run = time.time_ns()
    with httpx.Client(
        base_url=f"https://{HOST}:{server.port}",
        verify=info["caCertificatePath"],
        headers=headers,
        params={"api-version": API_VERSION},
        timeout=60,
    ) as client:
        client.get(f"/enrollments/{ids[0]}")  # connect
        figures = {
            "GET": _timed(samples, lambda i: client.get(f"/enrollments/{ids[i]}"), 200),
            "PUT update": _timed(
                samples,
                lambda i: client.put(
                    f"/enrollments/{ids[i]}", content=_body(ids[i]), headers={"If-Match": "*"}
                ),
                200,
            ),
            "PUT create": _timed(
                samples,
                lambda i: client.put(
                    f"/enrollments/new-{run}-{i}", content=_body(f"new-{run}-{i}")
                ),
                200,
            ),
        }
        figures["query page"] = _query_pages(client, "SELECT * FROM enrollments", samples)
        figures["filtered query page"] = _query_pages(
            client,
            "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'",
            min(samples, max(1, count // DISABLED_EVERY // QUERY_PAGE)),
        )
    return figures


def _query_pages(client: httpx.Client, query: str, pages: int) -> Latency:
    """``pages`` successive pages of one query, from the first, each timed."""
    continuation: list[str | None] = [None]

    def page(_: int) -> httpx.Response:
        headers = {"x-ms-max-item-count": str(QUERY_PAGE)}
        if continuation[0] is not None:
            headers["x-ms-continuation"] = continuation[0]
        response = client.post("/enrollments/query", json={"query": query}, headers=headers)
        continuation[0] = response.headers.get("x-ms-continuation")
        return response

    return _timed(pages, page, 200)


# --- main -----------------------------------------------------------------------------------


def bench_size(
    work: Path, fleet: Path, count: int, samples: int
) -> tuple[Import, dict[str, Latency], dict[str, int]]:
    data_dir = work / f"data-{count}"
    server = start_server(data_dir, work, f"dpsd-{count}")
    try:
        info = dpsd_info(data_dir)
        imported = run_import(server, info, fleet)
        if imported.summary["created"] != count:
            raise BenchError(f"import created {imported.summary}, expected {count}")
        latencies = measure(server, info, count, samples)
        export_seconds = run_export(server, info, work / f"export-{count}.jsonl", count)
        memory = memory_kb(server)
    finally:
        server.stop()
    return Import(imported.seconds, imported.summary, export_seconds), latencies, memory


def report(
    count: int, small: int, results: dict[int, tuple[Import, dict[str, Latency], dict[str, int]]]
) -> list[str]:
    big_import, big, big_memory = results[count]
    _, little, little_memory = results[small]
    lines = [
        f"{describe_code()}; {describe_machine()}",
        "",
        f"import of {count:,} enrollments: {big_import.seconds:.0f} s "
        f"({count / big_import.seconds:,.0f} per second)",
        f"export of the same: {big_import.export_seconds:.0f} s "
        f"({count / big_import.export_seconds:,.0f} per second)",
        "",
        f"| request | median at {small:,} | median at {count:,} | ratio "
        f"| p99 at {small:,} | p99 at {count:,} |",
        "|---|---|---|---|---|---|",
    ]
    for name, at_small in little.items():
        at_big = big[name]
        lines.append(
            f"| {name} | {at_small.median_ms:.2f} ms | {at_big.median_ms:.2f} ms "
            f"| {at_big.median_ms / at_small.median_ms:.2f} "
            f"| {at_small.p99_ms:.2f} ms | {at_big.p99_ms:.2f} ms |"
        )
    lines += [
        "",
        f"| server memory | at {small:,} | at {count:,} |",
        "|---|---|---|",
        f"| RSS after the measurements | {little_memory['VmRSS'] / 1024:.0f} MB "
        f"| {big_memory['VmRSS'] / 1024:.0f} MB |",
        f"| peak RSS (VmHWM) | {little_memory['VmHWM'] / 1024:.0f} MB "
        f"| {big_memory['VmHWM'] / 1024:.0f} MB |",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=2_000)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpsd-fleet-") as folder:
        work = Path(folder)
        fleet, small_fleet = work / "fleet.jsonl", work / "small.jsonl"
        started = time.perf_counter()
        write_fleet(fleet, arguments.count)
        head(fleet, small_fleet, arguments.small)
        print(f"fleet file written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results = {
            arguments.small: bench_size(work, small_fleet, arguments.small, arguments.samples),
            arguments.count: bench_size(work, fleet, arguments.count, arguments.samples),
        }
        print("\n".join(report(arguments.count, arguments.small, results)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
