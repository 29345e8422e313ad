"""Moving whole fleets through the service API: export to JSON Lines, import with bulk
operations.

Each line of a fleet file is one record::

    {"kind": "enrollment" | "enrollmentGroup" | "registration", "record": {...}}

Enrollments and groups carry their attestation with keys and certificates, so an import
recreates them exactly. dpsd gives them out with a query extension (``include_secrets``);
from other services, records that come without keys are completed with
``attestationmechanism``, one request each. That gives no X.509 certificates, only their
info: an import cannot create such a record, so it counts it as existing when the target
already holds it (created there with its certificate file) and as failed otherwise.
Registration states are exported for the record only: the service API has no way to write
them, so an import counts them as skipped, with that reason.

The import is resumable: records are created with bulk ``create``, and a record the target
already holds is skipped (or, with ``update_existing``, written over), so a re-run after an
interruption only does what is left.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from dpsd.client import (
    AsyncDpsServiceClient,
    AsyncEnrollmentOperations,
    BadRequestError,
    BulkMode,
    NotFoundError,
    PayloadTooLargeError,
)

Record = dict[str, Any]
T = TypeVar("T")

BULK_LIMIT = 10
"""Records per bulk operation: the service API's limit."""
EXPORT_PAGE = 1000
SERVER_FIELDS = ("etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "registrationState")
EXAMPLES_PER_REASON = 3


class Kind(enum.StrEnum):
    enrollment = "enrollment"
    group = "enrollmentGroup"
    registration = "registration"

    @property
    def id_field(self) -> str:
        return "enrollmentGroupId" if self is Kind.group else "registrationId"


def _operations(client: AsyncDpsServiceClient, kind: Kind) -> AsyncEnrollmentOperations:
    return client.enrollment_groups if kind is Kind.group else client.enrollments


Progress = Callable[[int], None]
"""Told how many more records are done."""

Check = Callable[["Kind", Record, bool], str | None]
"""Why the target would refuse a record (``CODE message``), found without sending it; None
when it would take it. Its last argument: whether the target holds the record."""


# --- export ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ExportCounts:
    enrollments: int = 0
    groups: int = 0
    registrations: int = 0


async def _chunks(records: AsyncIterator[Record], size: int) -> AsyncIterator[list[Record]]:
    chunk: list[Record] = []
    async for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def has_secrets(record: Record) -> bool:
    """Whether the record carries what its device proves itself with: keys, an endorsement
    key, or certificates (not only their info)."""
    attestation = record.get("attestation")
    if not isinstance(attestation, dict):
        return False
    match attestation.get("type"):
        case "none":
            return True
        case "symmetricKey":
            return bool((attestation.get("symmetricKey") or {}).get("primaryKey"))
        case "tpm":
            return bool((attestation.get("tpm") or {}).get("endorsementKey"))
        case "x509":
            return isinstance(attestation.get("x509"), dict) and not lacks_certificates(record)
        case _:
            return False


async def _with_secrets(
    operations: AsyncEnrollmentOperations, kind: Kind, records: list[Record], limit: int
) -> list[Record]:
    """The records, those that came without their secrets completed with the attestation
    mechanism (a request each: what a service without dpsd's query extension needs)."""
    gate = asyncio.Semaphore(limit)

    async def complete(record: Record) -> Record:
        if has_secrets(record):
            return record
        async with gate:
            mechanism = await operations.attestation_mechanism(record[kind.id_field])
        return {**record, "attestation": mechanism}

    return await asyncio.gather(*(complete(record) for record in records))


def _line(kind: Kind, record: Record) -> str:
    return json.dumps({"kind": str(kind), "record": record}, separators=(",", ":")) + "\n"


async def export_fleet(
    client: AsyncDpsServiceClient,
    sink: TextIO,
    *,
    registrations: bool,
    concurrency: int,
    progress: Progress,
) -> ExportCounts:
    """Write every enrollment and group (and, if asked, every group's registration states)."""
    counts = ExportCounts()
    group_ids: list[str] = []
    for kind in (Kind.group, Kind.enrollment):
        operations = _operations(client, kind)
        records = operations.query("SELECT *", page_size=EXPORT_PAGE, include_secrets=True)
        pages = _chunks(records, EXPORT_PAGE)
        async for chunk in pages:
            for record in await _with_secrets(operations, kind, chunk, concurrency):
                sink.write(_line(kind, record))
                if kind is Kind.group:
                    group_ids.append(record[kind.id_field])
            progress(len(chunk))
            if kind is Kind.group:
                counts.groups += len(chunk)
            else:
                counts.enrollments += len(chunk)
    if registrations:
        counts.registrations = await _export_states(client, group_ids, sink, progress)
    return counts


async def _export_states(
    client: AsyncDpsServiceClient, group_ids: list[str], sink: TextIO, progress: Progress
) -> int:
    """The states of group devices; those of individual enrollments travel inside them."""
    count = 0
    for group_id in group_ids:
        async for state in client.registrations.query(group_id, page_size=EXPORT_PAGE):
            sink.write(_line(Kind.registration, state))
            count += 1
            progress(1)
    return count


# --- import ---------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    created = "created"
    updated = "updated"
    skipped = "skipped"
    failed = "failed"


@dataclass(slots=True)
class ImportSummary:
    """How many records ended each way, and why those skipped or failed did."""

    counts: Counter[Outcome] = field(default_factory=Counter)
    reasons: Counter[tuple[Outcome, str]] = field(default_factory=Counter)
    examples: dict[tuple[Outcome, str], list[str]] = field(default_factory=dict)
    """The first few records of each reason: a million failures keep three ids, not all."""

    def add(self, outcome: Outcome, count: int = 1) -> None:
        self.counts[outcome] += count

    def add_with_reason(self, outcome: Outcome, reason: str, where: str) -> None:
        self.counts[outcome] += 1
        self.reasons[outcome, reason] += 1
        examples = self.examples.setdefault((outcome, reason), [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(where)

    def reason_counts(self) -> list[tuple[Outcome, str, int, list[str]]]:
        return [
            (outcome, reason, count, self.examples[outcome, reason])
            for (outcome, reason), count in sorted(self.reasons.items(), key=lambda i: -i[1])
        ]


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of a fleet file, ready to send."""

    kind: Kind
    identifier: str
    record: Record


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str


def parse_line(number: int, text: str) -> Entry | BadLine:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return BadLine(number, f"not JSON ({error.msg})")
    if not isinstance(value, dict) or not isinstance(value.get("record"), dict):
        return BadLine(number, 'not a fleet record {"kind": ..., "record": {...}}')
    try:
        kind = Kind(str(value.get("kind")))
    except ValueError:
        return BadLine(number, f"unknown kind {value.get('kind')!r}")
    record: Record = value["record"]
    identifier = record.get(kind.id_field)
    if not isinstance(identifier, str) or not identifier:
        return BadLine(number, f"the record has no {kind.id_field}")
    clean = {name: item for name, item in record.items() if name not in SERVER_FIELDS}
    return Entry(kind, identifier, clean)


def read_entries(lines: Iterable[str]) -> Iterator[Entry | BadLine]:
    for number, text in enumerate(lines, start=1):
        if text.strip():
            yield parse_line(number, text)


def batches(entries: Iterable[Entry | BadLine]) -> Iterator[list[Entry] | BadLine]:
    """Entries of one kind at a time, at most BULK_LIMIT together, in file order per kind."""
    pending: dict[Kind, list[Entry]] = {}
    for entry in entries:
        if isinstance(entry, BadLine):
            yield entry
            continue
        batch = pending.setdefault(entry.kind, [])
        batch.append(entry)
        if len(batch) == BULK_LIMIT:
            yield pending.pop(entry.kind)
    yield from pending.values()


def _is_conflict(error: Record) -> bool:
    code = error.get("errorCode")
    return isinstance(code, int) and code // 1000 == 409


CERTIFICATES_NOT_IN_FILE = (
    "X.509 certificates not in the file (the service API returns only their info):"
    " create the record on the target with its certificate file"
)


ALREADY_THERE = "the target holds it already (--update-existing writes over it)"
WRITTEN_OVER = "the target holds it: --update-existing writes over it"
NEW_THERE = "the target does not hold it"


def lacks_certificates(record: Record) -> bool:
    """Whether an X.509 certificate of the record is there only as its info, as exported."""
    attestation = record.get("attestation")
    x509 = attestation.get("x509") if isinstance(attestation, dict) else None
    if not isinstance(x509, dict):
        return False
    for field_name in ("clientCertificates", "signingCertificates"):
        slots = x509.get(field_name)
        if isinstance(slots, dict) and any(
            isinstance(slot, dict) and not slot.get("certificate") for slot in slots.values()
        ):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Importer:
    """Writes batches to the target, recording what became of each record."""

    client: AsyncDpsServiceClient
    summary: ImportSummary
    update_existing: bool
    dry_run: bool
    check: Check | None = None
    """Used by a dry run: the checks the service makes of a record before it writes it."""

    async def run(self, batch: list[Entry]) -> None:
        kind = batch[0].kind
        if kind is Kind.registration:
            for entry in batch:
                self.summary.add_with_reason(
                    Outcome.skipped,
                    "registration states cannot be written through the service API"
                    " (devices get them again when they next register)",
                    entry.identifier,
                )
            return
        if self.dry_run:
            await self._plan(kind, batch)
            return
        sendable = [entry for entry in batch if not lacks_certificates(entry.record)]
        existing = await self._held_without_certificates(kind, batch)
        if sendable:
            existing += await self._bulk(kind, "create", sendable, Outcome.created)
        if not existing:
            return
        if self.update_existing:
            await self._bulk(kind, "update", existing, Outcome.updated)
        else:
            self.summary.add(Outcome.skipped, len(existing))

    async def _bulk(
        self, kind: Kind, mode: BulkMode, batch: list[Entry], success: Outcome
    ) -> list[Entry]:
        """Send one bulk operation; returns the entries the target already held.

        A batch refused whole (a record the service cannot read, or a body over its size
        limit) is sent again a record at a time, so that only the culprits fail."""
        operations = _operations(self.client, kind)
        try:
            result = await operations.run_bulk_operation(mode, [entry.record for entry in batch])
        except (BadRequestError, PayloadTooLargeError) as refused:
            if len(batch) == 1:
                reason = f"{refused.error_code or refused.status_code} {refused.message}"
                self.summary.add_with_reason(Outcome.failed, reason, batch[0].identifier)
                return []
            return [
                held for entry in batch for held in await self._bulk(kind, mode, [entry], success)
            ]
        errors = {
            str(error.get(kind.id_field, "")).lower(): error for error in result.get("errors") or []
        }
        existing: list[Entry] = []
        for entry in batch:
            error = errors.get(entry.identifier.lower())
            if error is None:
                self.summary.add(success)
            elif mode == "create" and _is_conflict(error):
                existing.append(entry)
            else:
                reason = f"{error.get('errorCode')} {error.get('errorStatus', '')}".strip()
                self.summary.add_with_reason(Outcome.failed, reason, entry.identifier)
        return existing

    async def _held(self, kind: Kind, batch: list[Entry]) -> list[bool]:
        """Whether the target holds each record."""
        operations = _operations(self.client, kind)

        async def held(entry: Entry) -> bool:
            try:
                await operations.get(entry.identifier)
            except (NotFoundError, BadRequestError):  # an id the target refuses it cannot hold
                return False
            return True

        return list(await asyncio.gather(*(held(entry) for entry in batch)))

    async def _held_without_certificates(self, kind: Kind, batch: list[Entry]) -> list[Entry]:
        """The records lacking their certificates that the target holds; those it does not
        hold cannot be created, and fail."""
        lacking = [entry for entry in batch if lacks_certificates(entry.record)]
        if not lacking:
            return []
        held: list[Entry] = []
        for entry, is_held in zip(lacking, await self._held(kind, lacking), strict=True):
            if is_held:
                held.append(entry)
            else:
                self.summary.add_with_reason(
                    Outcome.failed, CERTIFICATES_NOT_IN_FILE, entry.identifier
                )
        return held

    async def _plan(self, kind: Kind, batch: list[Entry]) -> None:
        """What the import would do, and why, for each record: reads only."""
        for entry, is_held in zip(batch, await self._held(kind, batch), strict=True):
            if is_held and not self.update_existing:
                self.summary.add_with_reason(Outcome.skipped, ALREADY_THERE, entry.identifier)
                continue
            if not is_held and lacks_certificates(entry.record):
                self.summary.add_with_reason(
                    Outcome.failed, CERTIFICATES_NOT_IN_FILE, entry.identifier
                )
                continue
            refused = self.check(kind, entry.record, is_held) if self.check else None
            if refused is not None:
                self.summary.add_with_reason(Outcome.failed, refused, entry.identifier)
            elif is_held:
                self.summary.add_with_reason(Outcome.updated, WRITTEN_OVER, entry.identifier)
            else:
                self.summary.add_with_reason(Outcome.created, NEW_THERE, entry.identifier)


async def run_bounded(
    items: Iterable[T], step: Callable[[T], Awaitable[None]], concurrency: int
) -> None:
    """Apply ``step`` to the items, ``concurrency`` at a time; the first failure stops the
    rest and is raised as it is."""
    shared = iter(items)

    async def worker() -> None:
        for item in shared:  # workers take turns on one iterator
            await step(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None


async def import_fleet(
    client: AsyncDpsServiceClient,
    lines: Iterable[str],
    summary: ImportSummary,
    *,
    update_existing: bool,
    dry_run: bool,
    concurrency: int,
    progress: Progress,
    check: Check | None = None,
) -> None:
    """Import every line into ``summary``, which holds what was done even if this raises.
    A dry run reads the target only, and refuses what ``check`` refuses."""
    importer = Importer(client, summary, update_existing, dry_run, check)

    async def step(batch: list[Entry] | BadLine) -> None:
        if isinstance(batch, BadLine):
            summary.add_with_reason(Outcome.failed, batch.reason, f"line {batch.line}")
            progress(1)
            return
        await importer.run(batch)
        progress(len(batch))

    await run_bounded(batches(read_entries(lines)), step, concurrency)
