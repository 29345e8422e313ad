"""How long the store's writes of one device registration take, one registration after
another: the part of a registration that every dpsd process on the store waits for in
turn (SQLite takes one writer at a time), so a bound on how far ``--workers`` scales on one
SQLite file, whatever the cores; and what committing the writes of several registrations
together would save.

    .venv/bin/python bench/store_writes.py [--registrations 5000] [--together 10]

Runs dpsd's own repositories and statements (dpsd.storage.sql through the executor
``dpsd serve`` uses) on a fresh SQLite store in a temporary directory: for each registration,
the two writes of ``DeviceRegistrationService`` when a registration is settled within its
register request (the registration state, the operation saved finished). Three ways, one
after the other in the same run: each write its own transaction (as dpsd runs them), both
writes of a registration in one transaction, and the writes of ``--together``
registrations in one. Prints, for each, the milliseconds and the CPU milliseconds per
registration, and the registrations per second the writes alone allow.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dpsd.domain.registration import (
    AssignedDeviceSubstatus,
    DeviceRegistrationState,
    RegistrationOperation,
    RegistrationStatus,
)
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import InlineSqliteExecutor, create_executor
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import SqlOperationRepository, SqlRegistrationStateRepository


@dataclass(frozen=True)
class Timing:
    way: str
    seconds: float
    cpu_seconds: float


def records(
    prefix: str, index: int, now: datetime
) -> tuple[DeviceRegistrationState, RegistrationOperation]:
    registration_id = f"{prefix}-{index}"
    state = DeviceRegistrationState(
        registration_id=registration_id,
        status=RegistrationStatus.ASSIGNED,
        etag=f'"{index:032x}"',
        created=now,
        last_updated=now,
        assigned_hub="bench-hub-1.azure-devices.net",
        device_id=registration_id,
        substatus=AssignedDeviceSubstatus.INITIAL_ASSIGNMENT,
        enrollment_group_id="bench-fleet",
        initial_hub="bench-hub-1.azure-devices.net",
    )
    operation = RegistrationOperation(
        operation_id=f"4.{index:016x}.{prefix}",
        registration_id=registration_id,
        status=state.status,
        created=now,
        last_updated=now,
        enrollment_group_id="bench-fleet",
        attestation_type="symmetricKey",
        state=state,
    )
    return state, operation


async def measure(database: str, count: int, together: int) -> list[Timing]:
    """The writes of ``count`` registrations, each way, one registration after another."""
    engine = create_engine(database)
    await migrate(engine)
    executor = create_executor(database, engine)
    assert isinstance(executor, InlineSqliteExecutor)
    raw: sqlite3.Connection = executor._raw  # transactions around dpsd's own statements
    operations = SqlOperationRepository(executor)
    states = SqlRegistrationStateRepository(executor)
    now = datetime.now(UTC)
    timings = []
    try:
        for way, group in (
            ("autocommit", 0),
            ("one transaction", 1),
            (f"{together} together", together),
        ):
            prefix = f"bench-{way.replace(' ', '-')}"
            started, cpu = time.perf_counter(), time.process_time()
            for index in range(count):
                if group and index % group == 0:
                    raw.execute("BEGIN")
                state, operation = records(prefix, index, now)
                await states.put(state)
                await operations.save(operation)
                if group and (index % group == group - 1 or index == count - 1):
                    raw.execute("COMMIT")
            timings.append(Timing(way, time.perf_counter() - started, time.process_time() - cpu))
        return timings
    finally:
        await executor.close()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--registrations", type=int, default=5000)
    parser.add_argument("--together", type=int, default=10)
    arguments = parser.parse_args(argv)
    count = arguments.registrations
    with tempfile.TemporaryDirectory(prefix="dpsd-bench-store-") as folder:
        database = f"sqlite:///{Path(folder) / 'dpsd.db'}"
        timings = asyncio.run(measure(database, count, arguments.together))
    print(f"SQLite, the two writes of {count} registrations each way:")
    first = timings[0].cpu_seconds
    for timing in timings:
        per_registration = 1000 * timing.seconds / count
        print(
            f"  {timing.way:<18} {per_registration:.3f} ms, "
            f"CPU {1000 * timing.cpu_seconds / count:.3f} ms "
            f"({timing.cpu_seconds / first:.2f} of autocommit's) per registration, "
            f"{1000 / per_registration:.0f} registrations per second at most"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
