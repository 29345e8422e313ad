"""Etag-guarded create, update and delete, shared by every kind of record.

PUT semantics of the DPS service API: without If-Match a PUT creates, and refuses an
existing record; with If-Match it updates at that etag (``*``: at whatever etag is there).
The etag check happens in the store, so a concurrent writer cannot slip in between.

Records that name IoT hubs (enrollments, enrollment groups) can also be written without
reading first: ``write_unread`` is one statement that checks the hubs are linked as well
(docs/performance.md says why the service API's PUT needs it).
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import Field, dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from dpsd.domain.errors import DomainError, ValidationError
from dpsd.domain.etag import WILDCARD, normalize_if_match
from dpsd.service.errors import BadRequest, PreconditionFailed, ServiceError

DEFAULT_PAGE_SIZE = 100
MAX_BULK_ITEMS = 10
MAX_PAGE_SIZE = 1000
_WILDCARD_RETRIES = 5


class BulkMode(enum.StrEnum):
    """Modes of the bulk operations, matched case-insensitively (Node writes
    ``updateIfMatchEtag``)."""

    CREATE = "create"
    UPDATE = "update"
    UPDATE_IF_MATCH_ETAG = "updateIfMatchETag"
    DELETE = "delete"

    @classmethod
    def parse(cls, text: str) -> BulkMode:
        for mode in cls:
            if mode.value.lower() == text.lower():
                return mode
        raise ValidationError(
            f"bulk mode {text!r} is not one of {', '.join(mode.value for mode in cls)}"
        )


class Versioned(Protocol):
    @property
    def etag(self) -> str: ...


R = TypeVar("R", bound=Versioned)


class GuardedRepository(Protocol[R]):
    async def get(self, record_id: str) -> R | None: ...

    async def add(self, record: R) -> bool: ...

    async def replace(self, record: R, *, expected_etag: str) -> bool: ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...


class Dated(Versioned, Protocol):
    """A record (a dataclass) that keeps its creation time through every update."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def created(self) -> datetime: ...


D = TypeVar("D", bound=Dated)


class LinkedRepository(GuardedRepository[D], Protocol[D]):
    """A store of records that name IoT hubs, writing them whole in one atomic step with
    the check that those hubs are linked (ports.EnrollmentRepository says what each
    method answers)."""

    async def add_linked(self, record: D, *, hubs: Sequence[str]) -> bool | None: ...

    async def overwrite(
        self, record: D, *, expected_etag: str | None, hubs: Sequence[str] = ()
    ) -> datetime | None: ...


async def create_or_update(
    repository: GuardedRepository[R],
    record_id: str,
    if_match: str | None,
    build: Callable[[R | None], R],
    already_exists: Callable[[], ServiceError],
) -> R:
    """``build(stored)`` makes the record to write from the stored one (None on create)."""
    if if_match is None:
        return await _create(repository, build, already_exists)
    wanted = normalize_if_match(if_match)
    for _ in range(_WILDCARD_RETRIES):
        current = await repository.get(record_id)
        if current is None:
            if wanted != WILDCARD:
                raise PreconditionFailed(record_id)
            try:
                return await _create(repository, build, already_exists)
            except ServiceError:
                continue
        if wanted not in (WILDCARD, current.etag):
            raise PreconditionFailed(record_id)
        record = build(current)
        if await repository.replace(record, expected_etag=current.etag):
            return record
        if wanted != WILDCARD:
            raise PreconditionFailed(record_id)
    raise PreconditionFailed(record_id)


async def _create(
    repository: GuardedRepository[R],
    build: Callable[[R | None], R],
    already_exists: Callable[[], ServiceError],
) -> R:
    record = build(None)
    if not await repository.add(record):
        raise already_exists()
    return record


async def write_unread(
    repository: LinkedRepository[D],
    if_match: str | None,
    build: Callable[[D | None], D],
    hubs: Sequence[str],
    already_exists: Callable[[D], ServiceError],
) -> D | None:
    """create_or_update in one statement that also checks the named ``hubs`` are linked,
    without reading the stored record: a create, or an update that keeps nothing of the
    stored record but its creation time (with If-Match, only for a caller that knows
    ``build(None)`` is, creation time aside, what ``build`` makes of any stored record).

    ``already_exists(record)``: the error for a create that meets a record with its id.
    None leaves the write to the general path (its checks, then create_or_update), which
    reports what went wrong in its own order (an unlinked hub, then a precondition, then
    the record): when ``build`` fails, when no record matched, when some hub is not linked.
    """
    try:
        record = build(None)
    except DomainError:
        return None
    if if_match is None:
        added = await repository.add_linked(record, hubs=hubs)
        if added is False:  # the hubs are linked: the record exists
            raise already_exists(record)
        return record if added else None
    wanted = normalize_if_match(if_match)
    expected = None if wanted == WILDCARD else wanted
    created = await repository.overwrite(record, expected_etag=expected, hubs=hubs)
    return None if created is None else replace(record, created=created)


async def delete(
    repository: GuardedRepository[R],
    record_id: str,
    if_match: str | None,
    not_found: Callable[[], ServiceError],
) -> None:
    """Delete, at the If-Match etag when one is given."""
    wanted = normalize_if_match(if_match) if if_match is not None else WILDCARD
    expected = None if wanted == WILDCARD else wanted
    if await repository.delete(record_id, expected_etag=expected):
        return
    if expected is not None and await repository.get(record_id) is not None:
        raise PreconditionFailed(record_id)
    raise not_found()


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a query; ``continuation`` only when more follow."""

    items: list[T]
    continuation: str | None
    page_size: int


async def read_page(
    kind: str,
    continuation: str | None,
    max_items: int | None,
    fetch: Callable[[str | None, int], Awaitable[list[T]]],
    key_of: Callable[[T], str],
) -> Page[T]:
    """Keyset paging shared by every listing: ``fetch(after, limit)`` reads records in key
    order; one more than a page tells whether another page follows."""
    size = page_size(max_items)
    after = decode_continuation(kind, continuation) if continuation else None
    rows = await fetch(after, size + 1)
    items = rows[:size]
    token = encode_continuation(kind, key_of(items[-1])) if len(rows) > size else None
    return Page(items=items, continuation=token, page_size=size)


def page_size(max_items: int | None) -> int:
    if max_items is None or max_items <= 0:
        return DEFAULT_PAGE_SIZE
    return min(max_items, MAX_PAGE_SIZE)


def encode_continuation(kind: str, last_key: str) -> str:
    """An opaque paging token: where the last page ended, for one kind of listing."""
    return base64.urlsafe_b64encode(f"{kind}:{last_key}".encode()).decode()


def decode_continuation(kind: str, token: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError) as error:
        raise BadRequest("x-ms-continuation is not a token this service issued") from error
    prefix = f"{kind}:"
    if not text.startswith(prefix):
        raise BadRequest("x-ms-continuation is not a token this service issued")
    return text[len(prefix) :]
