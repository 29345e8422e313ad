"""References between records: enrollments and enrollment groups name IoT hubs (``iotHubs``,
``iotHubHostName``), and X.509 groups name CA certificates (``caReferences``).

Two rules keep them whole. Deleting a CA certificate or unlinking a hub that records still
name is refused, with the records named (``referrers_of_ca``, ``referrers_of_hub``), unless
forced. And a write may not make a reference to something that does not exist, except that an
update may keep a reference the stored record makes already (``Dangling``): a record left
dangling by a forced delete, or by data from before these rules, can still be fixed or
disabled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from dpsd.domain.enrollment import EnrollmentSettings
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.errors import DomainError, ValidationError
from dpsd.domain.ids import id_key
from dpsd.domain.query import ENROLLMENT_GROUP_QUERY_FIELDS, parse_query
from dpsd.service.errors import StillReferenced
from dpsd.service.ports import EnrollmentGroupRepository, EnrollmentRepository, HubRepository

SHOWN_REFERRERS = 5
"""How many referring records a message names; it gives the count of all."""
_PAGE = 500


class Settled(Protocol):
    """A record with enrollment settings: an enrollment or an enrollment group."""

    @property
    def settings(self) -> EnrollmentSettings: ...


S = TypeVar("S", bound=Settled)

Reference = tuple[str, str]
"""What a record refers to: ``("hub", key)`` or ``("ca", key)``, keys case-folded."""


def named_hubs(settings: EnrollmentSettings) -> list[str]:
    """The IoT hubs an enrollment names, each once, in the order named."""
    named = [
        *(settings.iot_hubs or ()),
        *([settings.iot_hub_host_name] if settings.iot_hub_host_name else []),
    ]
    return list(dict.fromkeys(named))


def ca_names(settings: EnrollmentSettings) -> list[str]:
    """The CA certificates an X.509 group names in ``caReferences``."""
    x509 = settings.attestation.x509
    references = x509.ca_references if x509 else None
    if references is None:
        return []
    return [name for name in (references.primary, references.secondary) if name is not None]


def references_of(settings: EnrollmentSettings) -> set[Reference]:
    hubs = {("hub", id_key(name)) for name in named_hubs(settings)}
    return hubs | {("ca", id_key(name)) for name in ca_names(settings)}


def hub_not_linked(host_name: str) -> ValidationError:
    return ValidationError(
        f"IoT hub {host_name!r} is not linked to this service (dpsd hub add {host_name})"
    )


@dataclass(frozen=True, slots=True)
class Dangling:
    """The references a write would make to things that do not exist (hubs not linked, CA
    certificates missing or unverified), each with the error that refuses it."""

    problems: tuple[tuple[Reference, DomainError], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __add__(self, other: Dangling) -> Dangling:
        return Dangling(self.problems + other.problems)

    def check(self, stored: Settled | None) -> None:
        """Refuse the first reference the stored record does not make already."""
        if not self.problems:
            return
        kept = references_of(stored.settings) if stored is not None else set()
        for reference, error in self.problems:
            if reference not in kept:
                raise error

    def guard(self, build: Callable[[S | None], S]) -> Callable[[S | None], S]:
        """``build``, checked against the stored record it is given (read at the etag the
        write is made at, so a change in between cannot slip a new reference through)."""
        if not self.problems:
            return build

        def checked(stored: S | None) -> S:
            self.check(stored)
            return build(stored)

        return checked

    async def refuse_new(
        self,
        read: Callable[[str], Awaitable[Settled | None]],
        record_id: str,
        if_match: str | None,
    ) -> None:
        """Refuse a new dangling reference before any etag is compared, as for a create:
        a create makes every reference anew, an update those the stored record lacks."""
        if self.problems:
            self.check(None if if_match is None else await read(record_id))


async def dangling_hubs(hubs: HubRepository, settings: EnrollmentSettings) -> Dangling:
    named = named_hubs(settings)
    missing = await hubs.missing(named) if named else []
    return Dangling(tuple((("hub", id_key(name)), hub_not_linked(name)) for name in missing))


@dataclass(frozen=True, slots=True)
class Referrers:
    """The records of one kind that name something: how many, and the first few ids."""

    kind: str
    count: int = 0
    first: tuple[str, ...] = ()

    def __str__(self) -> str:
        noun = self.kind if self.count == 1 else f"{self.kind}s"
        more = ", ..." if self.count > len(self.first) else ""
        return f"{self.count} {noun} ({', '.join(self.first)}{more})"


def describe(referrers: Iterable[Referrers]) -> str:
    """``2 enrollments (a, b) and 1 enrollment group (g)``: the kinds that have any."""
    return " and ".join(str(found) for found in referrers if found.count)


def left_behind(
    referrers: list[Referrers], force: bool, refusal: Callable[[str], str]
) -> tuple[Referrers, ...]:
    """The referrers a forced delete leaves behind. Unforced, any refuses the delete, with
    ``refusal(what refers)`` as the message."""
    left = tuple(found for found in referrers if found.count)
    if left and not force:
        raise StillReferenced(refusal(describe(left)))
    return left


R = TypeVar("R")


async def _find(
    kind: str,
    fetch: Callable[[str | None, int], Awaitable[list[R]]],
    refers: Callable[[R], bool],
    record_id: Callable[[R], str],
) -> Referrers:
    """Count the records ``fetch`` pages through (in key order) that ``refers`` accepts."""
    count, first, after = 0, list[str](), None
    while True:
        page = await fetch(after, _PAGE)
        for record in page:
            if refers(record):
                count += 1
                if len(first) < SHOWN_REFERRERS:
                    first.append(record_id(record))
        if len(page) < _PAGE:
            return Referrers(kind, count, tuple(first))
        after = id_key(record_id(page[-1]))


_X509_GROUPS = parse_query(
    "SELECT * WHERE attestation.type = 'x509'", ENROLLMENT_GROUP_QUERY_FIELDS
).where


async def referrers_of_ca(groups: EnrollmentGroupRepository, name: str) -> list[Referrers]:
    """The enrollment groups whose ``caReferences`` name the CA certificate."""
    key = id_key(name)

    def refers(group: EnrollmentGroup) -> bool:
        return key in map(id_key, ca_names(group.settings))

    found = await _find(
        "enrollment group",
        lambda after, limit: groups.query(_X509_GROUPS, after=after, limit=limit),
        refers,
        lambda group: group.enrollment_group_id,
    )
    return [found]


async def referrers_of_hub(
    enrollments: EnrollmentRepository, groups: EnrollmentGroupRepository, host_name: str
) -> list[Referrers]:
    """The enrollments and the enrollment groups that name the IoT hub."""
    key = id_key(host_name)

    def refers(record: Settled) -> bool:
        return key in map(id_key, named_hubs(record.settings))

    return [
        await _find(
            "enrollment",
            lambda after, limit: enrollments.naming_hub(host_name, after=after, limit=limit),
            refers,
            lambda record: record.registration_id,
        ),
        await _find(
            "enrollment group",
            lambda after, limit: groups.naming_hub(host_name, after=after, limit=limit),
            refers,
            lambda record: record.enrollment_group_id,
        ),
    ]
