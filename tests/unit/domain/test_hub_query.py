"""IoT hub queries: SELECT * or COUNT() FROM devices, and conditions over device twins."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.errors import InvalidQuery
from dpsd.domain.hub_device import (
    DeviceIdentity,
    DeviceStatus,
    HubAuthentication,
    HubAuthenticationType,
    HubDevice,
    TwinProperties,
)
from dpsd.domain.hub_query import (
    DEFAULT_COUNT_ALIAS,
    MAX_NESTING,
    MAX_QUERY_LENGTH,
    BooleanOp,
    Comparison,
    Condition,
    HubQuery,
    Not,
    matches,
    parse_hub_query,
)
from tests.unit.support import FAST

MOMENT = datetime(2026, 12, 1, tzinfo=UTC)


def where(condition: str) -> Condition:
    parsed = parse_hub_query(f"SELECT * FROM devices WHERE {condition}").where
    assert parsed is not None
    return parsed


def device_id_is(value: str) -> Comparison:
    return Comparison(("deviceId",), "=", value)


def hub_device(
    device_id: str = "dev-1",
    *,
    tags: dict[str, Any] | None = None,
    desired: dict[str, Any] | None = None,
    reported: dict[str, Any] | None = None,
    **identity: Any,
) -> HubDevice:
    return HubDevice(
        hub="hub.example",
        identity=replace(
            DeviceIdentity(device_id, HubAuthentication(HubAuthenticationType.NONE)), **identity
        ),
        generation_id="1" * 18,
        device_version=1,
        twin_version=1,
        status_updated=MOMENT,
        tags=tags or {},
        desired=TwinProperties(desired or {}),
        reported=TwinProperties(reported or {}),
    )


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["SELECT * FROM devices", "select * from DEVICES", "  SELECT*FROM devices \n"]
)
def test_select_all(text: str) -> None:
    assert parse_hub_query(text) == HubQuery(where=None, count_alias=None)


@pytest.mark.parametrize(
    ("text", "alias"),
    [
        ("SELECT COUNT() FROM devices", DEFAULT_COUNT_ALIAS),
        ("select count() as numberOfDevices from devices", "numberOfDevices"),
        ("SELECT COUNT ( ) AS n FROM devices WHERE status = 'enabled'", "n"),
    ],
)
def test_select_count(text: str, alias: str) -> None:
    assert parse_hub_query(text).count_alias == alias


def test_where_clause() -> None:
    assert parse_hub_query("SELECT * FROM devices WHERE deviceId = 'a'") == HubQuery(
        where=device_id_is("a")
    )


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("deviceId", ("deviceId",)),
        ("DEVICEID", ("deviceId",)),
        ("devices.deviceId", ("deviceId",)),
        ("status", ("status",)),
        ("capabilities.IotEdge", ("capabilities", "iotEdge")),
        ("tags.site", ("tags", "site")),
        ("Tags.Site.Floor", ("tags", "Site", "Floor")),
        ("properties.desired.rate", ("properties", "desired", "rate")),
        ("properties.Reported.fw.version", ("properties", "reported", "fw", "version")),
        ("devices.tags.x_1", ("tags", "x_1")),
    ],
)
def test_fields(name: str, path: tuple[str, ...]) -> None:
    assert where(f"{name} = 1") == Comparison(path, "=", 1)


@pytest.mark.parametrize(
    "name", ["etag", "tags", "properties.desired", "properties", "capabilities", "twin.x"]
)
def test_unknown_fields_are_refused(name: str) -> None:
    with pytest.raises(InvalidQuery, match="cannot filter on"):
        where(f"{name} = 1")


@pytest.mark.parametrize(
    ("operator", "meant"),
    [("=", "="), ("!=", "!="), ("<>", "!="), ("<", "<"), (">", ">"), ("<=", "<="), (">=", ">=")],
)
def test_operators(operator: str, meant: str) -> None:
    assert where(f"tags.a {operator} 1") == Comparison(("tags", "a"), meant, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'a'", "a"),
        ('"a"', "a"),
        ("'it''s'", "it's"),
        ("'it\\'s'", "it's"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'back\\\\slash'", "back\\slash"),
        ("''", ""),
        ("12", 12),
        ("-3", -3),
        ("1.5", 1.5),
        ("2e3", 2000.0),
        (".5", 0.5),
        ("true", True),
        ("FALSE", False),
        ("null", None),
        ("Null", None),
    ],
)
def test_values(literal: str, value: object) -> None:
    condition = where(f"tags.a = {literal}")
    assert isinstance(condition, Comparison)
    assert condition.value == value
    assert type(condition.value) is type(value)


def test_and_binds_tighter_than_or_and_not_tighter_still() -> None:
    a, b, c = device_id_is("a"), device_id_is("b"), device_id_is("c")
    assert where("deviceId = 'a' OR deviceId = 'b' AND deviceId = 'c'") == BooleanOp(
        "or", (a, BooleanOp("and", (b, c)))
    )
    assert where("(deviceId = 'a' or deviceId = 'b') and not deviceId = 'c'") == BooleanOp(
        "and", (BooleanOp("or", (a, b)), Not(c))
    )
    assert where("deviceId = 'a' and deviceId = 'b' and deviceId = 'c'") == BooleanOp(
        "and", (a, b, c)
    )


def test_nesting_is_bounded() -> None:
    inside = "(" * MAX_NESTING + "deviceId = 'a'" + ")" * MAX_NESTING
    assert where(inside) == device_id_is("a")
    with pytest.raises(InvalidQuery, match="deeper than"):
        where("(" + inside + ")")
    with pytest.raises(InvalidQuery, match="deeper than"):
        where("NOT " * (MAX_NESTING + 1) + "deviceId = 'a'")


def test_length_is_bounded() -> None:
    text = "SELECT * FROM devices WHERE deviceId = '"
    with pytest.raises(InvalidQuery, match="longer than"):
        parse_hub_query(text + "a" * (MAX_QUERY_LENGTH - len(text)) + "'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT deviceId FROM devices", "SELECT \\* and SELECT COUNT\\(\\) only, not SELECT dev"),
        ("SELECT tags.x, deviceId FROM devices", "only"),
        ("SELECT TOP 5 * FROM devices", "only"),
        ("SELECT", "SELECT \\* and SELECT COUNT\\(\\) only"),
        ("SELECT * FROM devices.modules", "FROM devices only"),
        ("SELECT * FROM enrollments", "FROM devices only"),
        ("SELECT *", "expected FROM devices"),
        ("SELECT * WHERE deviceId = 'a'", "expected FROM devices, found 'WHERE'"),
        ("SELECT COUNT FROM devices", "expected '\\(' after COUNT"),
        ("SELECT COUNT() AS FROM devices", "expected a name after AS"),
        ("SELECT COUNT() AS a.b FROM devices", "expected a name after AS"),
        ("SELECT * FROM devices ORDER BY deviceId", "unexpected 'ORDER'"),
        ("SELECT * FROM devices GROUP BY status", "unexpected 'GROUP'"),
        ("DELETE FROM devices", "starts with SELECT"),
        ("", "starts with SELECT"),
        ("SELECT * FROM devices WHERE", "ends too early"),
        ("SELECT * FROM devices WHERE deviceId", "ends too early"),
        ("SELECT * FROM devices WHERE deviceId LIKE 'a'", "expected =, !=, <>"),
        ("SELECT * FROM devices WHERE deviceId = abc", "expected a quoted string"),
        ("SELECT * FROM devices WHERE 'a' = deviceId", "expected a field name"),
        ("SELECT * FROM devices WHERE (deviceId = 'a'", "ends too early"),
        ("SELECT * FROM devices WHERE deviceId = 'a", "cannot read the query at character"),
        ("SELECT * FROM devices WHERE tags.a. = 1", "cannot read the query at character"),
        ("SELECT * FROM devices WHERE tags.a = 1 ;", "cannot read the query at character"),
    ],
)
def test_what_cannot_be_understood_is_named(text: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        parse_hub_query(text)


@FAST
@given(st.text(max_size=200))
def test_any_text_parses_or_fails_with_invalid_query(text: str) -> None:
    with contextlib.suppress(InvalidQuery):
        parse_hub_query(text)


TOKENS = st.sampled_from(
    [
        "SELECT", "*", "COUNT", "(", ")", "AS", "n", "FROM", "devices", "WHERE", "AND", "OR",
        "NOT", "deviceId", "tags.a", "properties.desired.b", "status", "=", "!=", "<>", "<",
        ">=", "'x'", '"y"', "1", "-2.5", "true", "null", ",",
    ]
)  # fmt: skip


@FAST
@given(st.lists(TOKENS, max_size=30))
def test_any_sequence_of_query_words_parses_or_fails_with_invalid_query(words: list[str]) -> None:
    try:
        query = parse_hub_query(" ".join(words))
    except InvalidQuery:
        return
    if query.where is not None:
        matches(query.where, hub_device())


# --- evaluation ---------------------------------------------------------------------------


def holds(condition: str, device: HubDevice) -> bool:
    return matches(where(condition), device)


def test_fixed_fields() -> None:
    edge = hub_device("Edge-1", iot_edge=True, status=DeviceStatus.DISABLED)
    assert holds("deviceId = 'Edge-1'", edge)
    assert not holds("deviceId = 'edge-1'", edge)
    assert holds("status = 'disabled'", edge)
    assert holds("capabilities.iotEdge = true", edge)
    assert not holds("capabilities.iotEdge = true", hub_device())


def test_twin_paths() -> None:
    device = hub_device(
        tags={"site": {"floor": 3, "name": "north"}},
        desired={"rate": 1.5},
        reported={"fw": "1.0"},
    )
    assert holds("tags.site.floor = 3", device)
    assert holds("tags.site.floor = 3.0", device)
    assert holds("tags.site.name = 'north' AND properties.desired.rate > 1", device)
    assert holds("properties.reported.fw = '1.0'", device)
    assert not holds("tags.Site.floor = 3", device)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("tags.missing = 1", False),
        ("tags.missing = null", False),
        ("tags.missing < 1", False),
        ("tags.missing >= 'a'", False),
        ("tags.missing != 1", True),
        ("tags.missing <> null", True),
        ("NOT tags.missing = 1", True),
        ("tags.n.deeper = 1", False),
        ("tags.n.deeper != 1", True),
    ],
)
def test_a_missing_field_compares_false_except_with_not_equal(
    condition: str, expected: bool
) -> None:
    assert holds(condition, hub_device(tags={"n": 1})) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("tags.n = 2", True),
        ("tags.n != 2", False),
        ("tags.n < 3", True),
        ("tags.n <= 2", True),
        ("tags.n > 2", False),
        ("tags.n >= 2.0", True),
        ("tags.n = '2'", False),
        ("tags.n != '2'", True),
        ("tags.n < '3'", False),
        ("tags.flag = 1", False),
        ("tags.flag = true", True),
        ("tags.flag > false", False),
        ("tags.s = 'b'", True),
        ("tags.s < 'c'", True),
        ("tags.s > 'B'", True),
        ("tags.s >= 'b'", True),
        ("tags.s > 'b'", False),
        ("tags.nothing = null", True),
        ("tags.nothing != null", False),
        ("tags.nothing = 0", False),
        ("tags.obj = 1", False),
        ("tags.obj != 1", True),
        ("tags.list = 1", False),
    ],
)
def test_values_compare_only_within_their_json_type(condition: str, expected: bool) -> None:
    device = hub_device(
        tags={"n": 2, "flag": True, "s": "b", "nothing": None, "obj": {"a": 1}, "list": [1]}
    )
    assert holds(condition, device) is expected


def test_boolean_combinations() -> None:
    device = hub_device("a", tags={"x": 1})
    assert holds("deviceId = 'b' OR tags.x = 1", device)
    assert not holds("deviceId = 'a' AND tags.x = 2", device)
    assert holds("NOT (deviceId = 'b' OR tags.x = 2)", device)
    assert holds("(deviceId = 'a' OR deviceId = 'b') AND NOT tags.x > 1", device)
