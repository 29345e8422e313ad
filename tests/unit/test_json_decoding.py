"""The JSON nesting limit across the wire models of every API: a body is refused for its depth
exactly when a value the model keeps nests deeper than 64 levels, or when the body nests
deeper than any decoder follows; whatever is not refused decodes as it always did."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpsd import hub_wire, wire
from dpsd.domain.json_depth import MAX_JSON_DEPTH, JsonTooDeep
from dpsd.json_decoding import decode_json
from tests.unit.domain.test_json_depth import depth

DEEP = "@DEEP@"
BEYOND_THE_DECODER = 5000
"""Deeper than Python's recursion limit lets msgspec follow."""
SYMMETRIC_KEY = {"type": "symmetricKey"}

# (model, body with a slot, levels of objects and arrays around the slot (the body's own
# object counts; the slot's key does not add one), whether the model keeps what is in it)
SLOTS: list[tuple[type[Any], Any, int, bool]] = [
    (
        wire.IndividualEnrollmentWire,
        {"registrationId": "a", "initialTwin": {"tags": DEEP}},
        2,
        True,
    ),
    (wire.IndividualEnrollmentWire, {"optionalDeviceInformation": {"x": DEEP}}, 2, True),
    (wire.IndividualEnrollmentWire, {"registrationState": {"payload": DEEP}}, 2, True),
    (wire.IndividualEnrollmentWire, {"attestation": SYMMETRIC_KEY, "unknown": DEEP}, 1, False),
    (wire.EnrollmentGroupWire, {"initialTwin": {"properties": {"desired": DEEP}}}, 3, True),
    (
        wire.BulkEnrollmentOperationWire,
        {"mode": "create", "enrollments": [{"initialTwin": {"tags": DEEP}}]},
        4,
        True,
    ),
    (
        wire.BulkEnrollmentGroupOperationWire,
        {"mode": "create", "enrollmentGroups": [{"initialTwin": DEEP}]},
        3,
        True,
    ),
    (wire.QuerySpecificationWire, {"query": "SELECT *", "unknown": DEEP}, 1, False),
    (wire.DeviceRegistrationWire, {"registrationId": "a", "payload": DEEP}, 1, True),
    (hub_wire.DeviceBodyWire, {"deviceId": "a", "unknown": DEEP}, 1, False),
    (hub_wire.TwinBodyWire, {"tags": DEEP}, 1, True),
    (hub_wire.TwinBodyWire, {"properties": {"desired": DEEP}}, 2, True),
    (hub_wire.QuerySpecificationWire, {"query": "SELECT *", "unknown": DEEP}, 1, False),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=20,
)
levels = st.integers(0, 2 * MAX_JSON_DEPTH) | st.just(BEYOND_THE_DECODER)


def nested(value: Any, count: int) -> str:
    """``value`` as JSON inside ``count`` arrays (an object as the innermost container)."""
    return "[" * count + json.dumps(value) + "]" * count


def fill(template: Any, slot: str) -> bytes:
    return json.dumps(template).replace(json.dumps(DEEP), slot).encode()


@pytest.mark.parametrize(("model", "template", "around", "kept"), SLOTS)
@settings(max_examples=40, deadline=None)
@given(value=json_values.filter(lambda v: isinstance(v, dict)), count=levels)
def test_refused_exactly_beyond_the_limit(
    model: type[Any], template: Any, around: int, kept: bool, value: Any, count: int
) -> None:
    body = fill(template, nested(value, count))
    total = around + count + depth(value)
    try:
        decoded = decode_json(body, model)
    except JsonTooDeep:
        assert total > MAX_JSON_DEPTH
        assert kept or count == BEYOND_THE_DECODER
        return
    except msgspec.ValidationError:
        return  # the slot takes an object, not an array: the schema refuses it
    assert total <= MAX_JSON_DEPTH or not kept
    assert decoded == msgspec.json.decode(body, type=model)


@pytest.mark.parametrize(("model", "template", "around", "kept"), SLOTS)
def test_the_limit_falls_between_64_and_65_levels(
    model: type[Any], template: Any, around: int, kept: bool
) -> None:
    """The boundary itself, which random counts reach only now and then."""
    at_the_limit = MAX_JSON_DEPTH - around - 1  # arrays around an empty object
    within = fill(template, nested({}, at_the_limit))
    beyond = fill(template, nested({}, at_the_limit + 1))
    with contextlib.suppress(msgspec.ValidationError):
        decode_json(within, model)
    if kept:
        with pytest.raises((JsonTooDeep, msgspec.ValidationError)):
            decode_json(beyond, model)
    else:
        with contextlib.suppress(msgspec.ValidationError):
            decode_json(beyond, model)


@pytest.mark.parametrize(("model", "template", "around", "kept"), SLOTS)
@settings(max_examples=40, deadline=None)
@given(value=json_values)
def test_bodies_within_the_limit_decode_unchanged(
    model: type[Any], template: Any, around: int, kept: bool, value: Any
) -> None:
    body = fill(template, json.dumps(value))
    try:
        expected = msgspec.json.decode(body, type=model)
    except msgspec.ValidationError:
        with pytest.raises(msgspec.ValidationError):
            decode_json(body, model)
        return
    assert decode_json(body, model) == expected


@given(raw=st.binary(max_size=200) | st.text(alphabet='[]{}"0:,', max_size=3000).map(str.encode))
def test_any_bytes_are_decoded_or_refused_as_json_errors(raw: bytes) -> None:
    for model in (wire.IndividualEnrollmentWire, hub_wire.TwinBodyWire, Any):
        with contextlib.suppress(msgspec.DecodeError, JsonTooDeep):
            decode_json(raw, model)
