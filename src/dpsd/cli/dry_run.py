"""What the service would answer a record ``dpsd import`` sends, found without sending it.

The record goes the way the import sends it (a bulk operation of one, as the import sends
each record of a batch the service refused whole): the body read by the HTTP edge's
decoder into dpsd.wire's bulk shape, the item made a draft as the service API makes it, the
draft checked as the use case checks it before it reads the store and, for a record the
target does not hold, its attestation completed as a create completes it (keys read,
certificates parsed, missing keys generated and thrown away). A refusal is said as
the import reports it: the DPS error code and message. What only the target knows (a hub
the record names not linked there, a CA certificate it references not registered or not
verified) is not checked: the real import finds that out.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dpsd.cli.transfer import Kind
from dpsd.domain.attestation import AttestationMechanism
from dpsd.domain.errors import DomainError
from dpsd.http.bodies import MAX_BODY_BYTES, decode_json, too_large
from dpsd.http.errors import HttpError, status_and_code
from dpsd.http.service_api import bulk_drafts
from dpsd.service import enrollment_groups, enrollments
from dpsd.service.attestation import complete_attestation
from dpsd.service.errors import ServiceError
from dpsd.wire import (
    BulkEnrollmentGroupOperationWire,
    BulkEnrollmentOperationWire,
    enrollment_to_draft,
    group_to_draft,
)


class _Fresh:
    """Key material for keys a record leaves to the service (checked, then dropped)."""

    def random_bytes(self, count: int) -> bytes:
        return os.urandom(count)


def refusal(kind: Kind, record: dict[str, Any], held: bool) -> str | None:
    """Why the service would refuse the record (``CODE message``), or None. ``held``: the
    target holds it, so an update completes it from what is stored there, unread here."""
    try:
        attestation = _check(kind, record)
        if not held and attestation is not None:
            complete_attestation(attestation, None, _Fresh())
    except (DomainError, ServiceError, HttpError) as error:
        _, code = status_and_code(error)
        return f"{code} {error.message}"
    return None


def _check(kind: Kind, record: dict[str, Any]) -> AttestationMechanism | None:
    field = "enrollmentGroups" if kind is Kind.group else "enrollments"
    body = json.dumps({"mode": "create", field: [record]}, separators=(",", ":")).encode()
    if len(body) > MAX_BODY_BYTES:
        raise too_large(MAX_BODY_BYTES)
    if kind is Kind.group:
        groups = decode_json(body, BulkEnrollmentGroupOperationWire).enrollment_groups or []
        group = bulk_drafts(groups, group_to_draft, field)[0]
        enrollment_groups.check_draft(group.enrollment_group_id, group)
        return group.settings.attestation
    if kind is Kind.enrollment:
        items = decode_json(body, BulkEnrollmentOperationWire).enrollments or []
        enrollment = bulk_drafts(items, enrollment_to_draft, field)[0]
        enrollments.check_draft(enrollment.registration_id, enrollment)
        return enrollment.settings.attestation
    return None
