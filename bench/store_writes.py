"""How long the store's writes of one device registration take, one registration after
another: the part of a registration that every dpsd process on the store waits for in
turn (SQLite takes one writer at a time), so a bound on how far ``--workers`` scales on one
SQLite file, whatever the cores.

    .venv/bin/python bench/store_writes.py [--registrations 5000]

Runs dpsd's own repositories and statements (dpsd.storage.sql through the executor
``dpsd serve`` uses) on a fresh SQLite store in a temporary directory: for each registration,
the three writes of ``DeviceRegistrationService`` (the operation saved ``assigning``, the
registration state, the operation saved finished). Prints the milliseconds per
registration and the registrations per second the writes alone allow.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from dpsd.domain.registration import (
    AssignedDeviceSubstatus,
    DeviceRegistrationState,
    RegistrationOperation,
    RegistrationStatus,
)
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import create_executor
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import SqlOperationRepository, SqlRegistrationStateRepository


async def measure(database: str, count: int) -> float:
    """Seconds the writes of ``count`` registrations took, one after another."""
    engine = create_engine(database)
    await migrate(engine)
    executor = create_executor(database, engine)
    operations = SqlOperationRepository(executor)
    states = SqlRegistrationStateRepository(executor)
    now = datetime.now(UTC)
    prefix = f"bench-{int(time.time())}"
    try:
        started = time.perf_counter()
        for index in range(count):
            registration_id = f"{prefix}-{index}"
            operation = RegistrationOperation(
                operation_id=f"4.{index:016x}.{prefix}",
                registration_id=registration_id,
                status=RegistrationStatus.ASSIGNING,
                created=now,
                last_updated=now,
                enrollment_group_id="bench-fleet",
                attestation_type="symmetricKey",
            )
            await operations.save(operation)
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
            await states.put(state)
            await operations.save(replace(operation, status=state.status, state=state))
        return time.perf_counter() - started
    finally:
        await executor.close()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--registrations", type=int, default=5000)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpsd-bench-store-") as folder:
        database = f"sqlite:///{Path(folder) / 'dpsd.db'}"
        seconds = asyncio.run(measure(database, arguments.registrations))
    per_registration = 1000 * seconds / arguments.registrations
    print(
        f"SQLite: {per_registration:.3f} ms of writes per registration, "
        f"{1000 / per_registration:.0f} registrations per second at most from the writes alone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
