"""The fleet file engine: reading lines, batching them for bulk operations, the summary,
and running steps with bounded concurrency."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dpsd.cli.transfer import (
    BULK_LIMIT,
    BadLine,
    Entry,
    ImportSummary,
    Kind,
    Outcome,
    batches,
    lacks_certificates,
    parse_line,
    read_entries,
    run_bounded,
)

Record = dict[str, Any]


def line(kind: str, record: Record) -> str:
    return json.dumps({"kind": kind, "record": record})


def enrollment(registration_id: str) -> Entry:
    return Entry(Kind.enrollment, registration_id, {"registrationId": registration_id})


def group(group_id: str) -> Entry:
    return Entry(Kind.group, group_id, {"enrollmentGroupId": group_id})


def ids(batch: list[Entry] | BadLine) -> list[str] | BadLine:
    return batch if isinstance(batch, BadLine) else [entry.identifier for entry in batch]


# --- parse_line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "record", "expected_kind", "identifier"),
    [
        ("enrollment", {"registrationId": "dev-1"}, Kind.enrollment, "dev-1"),
        ("enrollmentGroup", {"enrollmentGroupId": "fleet"}, Kind.group, "fleet"),
        (
            "registration",
            {"registrationId": "dev-2", "status": "assigned"},
            Kind.registration,
            "dev-2",
        ),
    ],
)
def test_a_good_line_of_each_kind(
    kind: str, record: Record, expected_kind: Kind, identifier: str
) -> None:
    assert parse_line(1, line(kind, record)) == Entry(expected_kind, identifier, record)


def test_a_line_with_its_newline_parses() -> None:
    parsed = parse_line(3, line("enrollment", {"registrationId": "dev-1"}) + "\n")
    assert parsed == enrollment("dev-1")


def test_server_fields_are_stripped() -> None:
    record = {
        "registrationId": "dev-1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "a2V5"}},
        "etag": '"abc"',
        "createdDateTimeUtc": "2024-01-01T00:00:00Z",
        "lastUpdatedDateTimeUtc": "2024-01-02T00:00:00Z",
        "registrationState": {"registrationId": "dev-1", "status": "assigned"},
    }
    parsed = parse_line(1, line("enrollment", record))
    assert parsed == Entry(
        Kind.enrollment,
        "dev-1",
        {
            "registrationId": "dev-1",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "a2V5"}},
        },
    )


def test_not_json() -> None:
    parsed = parse_line(7, '{"kind": "enrollment", ')
    assert isinstance(parsed, BadLine)
    assert parsed.line == 7
    assert parsed.reason.startswith("not JSON (")


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '"enrollment"',
        '{"kind": "enrollment"}',
        '{"kind": "enrollment", "record": [1]}',
        '{"kind": "enrollment", "record": "dev-1"}',
    ],
)
def test_not_a_fleet_record(text: str) -> None:
    assert parse_line(2, text) == BadLine(2, 'not a fleet record {"kind": ..., "record": {...}}')


@pytest.mark.parametrize(("kind", "shown"), [("device", "'device'"), (None, "None"), (3, "3")])
def test_an_unknown_kind(kind: object, shown: str) -> None:
    text = json.dumps({"kind": kind, "record": {"registrationId": "dev-1"}})
    assert parse_line(4, text) == BadLine(4, f"unknown kind {shown}")


@pytest.mark.parametrize(
    ("kind", "record", "field"),
    [
        ("enrollment", {}, "registrationId"),
        ("enrollment", {"registrationId": ""}, "registrationId"),
        ("enrollment", {"registrationId": 5}, "registrationId"),
        ("enrollment", {"enrollmentGroupId": "fleet"}, "registrationId"),
        ("enrollmentGroup", {"registrationId": "dev-1"}, "enrollmentGroupId"),
        ("registration", {"deviceId": "dev-1"}, "registrationId"),
    ],
)
def test_a_missing_id(kind: str, record: Record, field: str) -> None:
    assert parse_line(5, line(kind, record)) == BadLine(5, f"the record has no {field}")


def test_read_entries_numbers_lines_from_one_and_skips_blank_ones() -> None:
    lines = [
        line("enrollment", {"registrationId": "dev-1"}) + "\n",
        "\n",
        "   \n",
        "garbage\n",
        line("enrollmentGroup", {"enrollmentGroupId": "fleet"}) + "\n",
    ]
    entries = list(read_entries(lines))
    assert entries[0] == enrollment("dev-1")
    assert isinstance(entries[1], BadLine)
    assert entries[1].line == 4
    assert entries[2] == group("fleet")
    assert len(entries) == 3


# --- batches --------------------------------------------------------------------------------


def test_at_most_the_bulk_limit_a_batch_in_order() -> None:
    assert BULK_LIMIT == 10
    names = [f"dev-{n:02}" for n in range(23)]
    assert [ids(batch) for batch in batches(enrollment(name) for name in names)] == [
        names[:10],
        names[10:20],
        names[20:],
    ]


def test_an_exact_multiple_leaves_no_empty_batch() -> None:
    names = [f"dev-{n:02}" for n in range(20)]
    assert [ids(batch) for batch in batches(enrollment(name) for name in names)] == [
        names[:10],
        names[10:],
    ]


def test_no_entries_no_batches() -> None:
    assert list(batches([])) == []


def test_one_kind_a_batch_in_file_order_per_kind() -> None:
    entries: list[Entry | BadLine] = []
    for n in range(12):
        entries.append(enrollment(f"dev-{n:02}"))
        if n % 2 == 0:
            entries.append(group(f"group-{n:02}"))
    entries.append(Entry(Kind.registration, "dev-00", {"registrationId": "dev-00"}))
    result = list(batches(entries))
    assert all(not isinstance(batch, BadLine) for batch in result)
    kinds = [{entry.kind for entry in batch} for batch in result if not isinstance(batch, BadLine)]
    assert all(len(kind) == 1 for kind in kinds)
    assert [ids(batch) for batch in result] == [
        [f"dev-{n:02}" for n in range(10)],  # full first
        [f"group-{n:02}" for n in range(0, 12, 2)],  # then what is left, by first seen
        ["dev-10", "dev-11"],
        ["dev-00"],
    ]


def test_bad_lines_are_passed_through_at_once() -> None:
    bad = BadLine(2, "not JSON (Expecting value)")
    later = BadLine(14, "unknown kind 'device'")
    entries: list[Entry | BadLine] = [enrollment("dev-a"), bad]
    entries += [enrollment(f"dev-{n:02}") for n in range(10)]
    entries += [later, group("fleet")]
    assert [ids(batch) for batch in batches(entries)] == [
        bad,
        ["dev-a", *(f"dev-{n:02}" for n in range(9))],
        later,
        ["dev-09"],
        ["fleet"],
    ]


# --- ImportSummary --------------------------------------------------------------------------


def test_reason_counts_most_frequent_first_with_at_most_three_examples() -> None:
    summary = ImportSummary()
    summary.add(Outcome.created, 5)
    for where in ("line 3", "line 9"):
        summary.add_with_reason(Outcome.failed, "not JSON (Expecting value)", where)
    for registration_id in ("dev-1", "dev-2", "dev-3", "dev-4"):
        summary.add_with_reason(
            Outcome.skipped, "registration states cannot be written", registration_id
        )
    summary.add_with_reason(Outcome.failed, "400004 bad key", "dev-9")
    assert summary.reason_counts() == [
        (Outcome.skipped, "registration states cannot be written", 4, ["dev-1", "dev-2", "dev-3"]),
        (Outcome.failed, "not JSON (Expecting value)", 2, ["line 3", "line 9"]),
        (Outcome.failed, "400004 bad key", 1, ["dev-9"]),
    ]
    assert summary.counts == {Outcome.created: 5, Outcome.failed: 3, Outcome.skipped: 4}


def test_the_same_reason_under_two_outcomes_is_counted_apart() -> None:
    summary = ImportSummary()
    summary.add_with_reason(Outcome.failed, "same", "a")
    summary.add_with_reason(Outcome.skipped, "same", "b")
    summary.add_with_reason(Outcome.skipped, "same", "c")
    assert summary.reason_counts() == [
        (Outcome.skipped, "same", 2, ["b", "c"]),
        (Outcome.failed, "same", 1, ["a"]),
    ]


def test_an_empty_summary() -> None:
    summary = ImportSummary()
    assert summary.reason_counts() == []
    assert summary.counts[Outcome.failed] == 0


# --- lacks_certificates ---------------------------------------------------------------------

INFO_ONLY = {"primary": {"info": {"sha256Thumbprint": "AB" * 32}}}
WITH_PEM = {"primary": {"certificate": "-----BEGIN CERTIFICATE-----..."}}


@pytest.mark.parametrize(
    ("attestation", "lacking"),
    [
        ({"type": "x509", "x509": {"clientCertificates": INFO_ONLY}}, True),
        ({"type": "x509", "x509": {"signingCertificates": INFO_ONLY}}, True),
        ({"type": "x509", "x509": {"clientCertificates": WITH_PEM}}, False),
        ({"type": "x509", "x509": {"caReferences": {"primary": "contoso"}}}, False),
        ({"type": "symmetricKey", "symmetricKey": {"primaryKey": "a2V5"}}, False),
        ("x509", False),
        ({"type": "x509", "x509": {"clientCertificates": ["garbage"]}}, False),
    ],
)
def test_exported_certificates_are_only_info(attestation: object, lacking: bool) -> None:
    assert lacks_certificates({"registrationId": "dev", "attestation": attestation}) is lacking


# --- run_bounded ----------------------------------------------------------------------------


async def test_every_item_is_run() -> None:
    done: list[int] = []

    async def step(item: int) -> None:
        done.append(item)

    await run_bounded(range(25), step, 4)
    assert sorted(done) == list(range(25))


async def test_no_items() -> None:
    async def step(item: int) -> None:
        raise AssertionError(item)

    await run_bounded([], step, 3)


async def test_concurrency_is_respected_and_used() -> None:
    running = 0
    peak = 0
    full = asyncio.Event()
    release = asyncio.Event()
    done: list[int] = []

    async def step(item: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            full.set()
        await release.wait()
        running -= 1
        done.append(item)

    task = asyncio.create_task(run_bounded(range(10), step, 3))
    await full.wait()
    assert running == 3
    assert done == []
    release.set()
    await task
    assert peak == 3
    assert sorted(done) == list(range(10))


async def test_the_first_failure_is_raised_as_itself() -> None:
    class Refused(Exception):
        pass

    async def step(item: int) -> None:
        if item == 2:
            raise Refused(f"item {item}")

    with pytest.raises(Refused, match="item 2") as raised:
        await run_bounded(range(5), step, 2)
    assert type(raised.value) is Refused
    assert not isinstance(raised.value, BaseExceptionGroup)


async def test_a_failure_stops_the_rest() -> None:
    started: list[int] = []

    async def step(item: int) -> None:
        started.append(item)
        if item == 3:
            raise ValueError("stop")

    with pytest.raises(ValueError, match="stop"):
        await run_bounded(range(100), step, 1)
    assert started == [0, 1, 2, 3]


async def test_a_failure_cancels_the_steps_in_flight() -> None:
    waiting = asyncio.Event()
    never = asyncio.Event()
    cancelled: list[int] = []

    async def step(item: int) -> None:
        if item == 0:
            try:
                waiting.set()
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(item)
                raise
        else:
            await waiting.wait()
            raise KeyError(item)

    with pytest.raises(KeyError):
        await run_bounded(range(2), step, 2)
    assert cancelled == [0]
