"""The query language: SELECT * [FROM enrollments] [WHERE condition]."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.errors import InvalidQuery
from dpsd.domain.query import (
    ENROLLMENT_QUERY_FIELDS,
    MAX_QUERY_LENGTH,
    BooleanOp,
    Comparison,
    Condition,
    Not,
    Query,
    Value,
    parse_query,
)
from tests.unit.support import FAST


def parse(text: str) -> Query:
    return parse_query(text, ENROLLMENT_QUERY_FIELDS)


def where(condition: str) -> Condition | None:
    return parse(f"SELECT * WHERE {condition}").where


def device(value: Value, operator: str = "=") -> Comparison:
    return Comparison("deviceId", "=" if operator == "=" else "!=", value)


@pytest.mark.parametrize(
    ("text", "source"),
    [
        ("SELECT *", None),
        ("select *", None),
        ("  SELECT   *  \n", None),
        ("SELECT * FROM enrollments", "enrollments"),
        ("select * from enrollments", "enrollments"),
        ("SELECT * FROM Enrollments", "enrollments"),
        ("SELECT*FROM enrollments", "enrollments"),
        ("SELECT * FROM devices", "devices"),  # the use case decides which sources it serves
    ],
)
def test_select_all(text: str, source: str | None) -> None:
    assert parse(text) == Query(source=source, where=None)


def test_where_after_from() -> None:
    query = parse("select * from enrollments where deviceId = 'a'")
    assert query == Query(source="enrollments", where=device("a"))


@pytest.mark.parametrize(("operator", "kind"), [("=", "="), ("!=", "!="), ("<>", "!=")])
def test_comparison_operators(operator: str, kind: str) -> None:
    assert where(f"deviceId {operator} 'a'") == Comparison("deviceId", kind, "a")  # type: ignore[arg-type]


def test_and_binds_tighter_than_or() -> None:
    assert where("deviceId = 'a' OR deviceId = 'b' AND deviceId = 'c'") == BooleanOp(
        "or", (device("a"), BooleanOp("and", (device("b"), device("c"))))
    )


def test_parentheses_group() -> None:
    assert where("(deviceId = 'a' or deviceId = 'b') and deviceId = 'c'") == BooleanOp(
        "and", (BooleanOp("or", (device("a"), device("b"))), device("c"))
    )


def test_chains_are_flat() -> None:
    assert where("deviceId = 'a' AND deviceId = 'b' AND deviceId = 'c'") == BooleanOp(
        "and", (device("a"), device("b"), device("c"))
    )


def test_not() -> None:
    assert where("NOT deviceId = 'a'") == Not(device("a"))
    assert where("not not deviceId = 'a'") == Not(Not(device("a")))
    assert where("NOT (deviceId = 'a' OR deviceId = 'b')") == Not(
        BooleanOp("or", (device("a"), device("b")))
    )
    assert where("NOT deviceId = 'a' AND deviceId = 'b'") == BooleanOp(
        "and", (Not(device("a")), device("b"))
    )


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'it''s'", "it's"),
        ('"say ""hi"""', 'say "hi"'),
        ("''", ""),
        ('"it\'s"', "it's"),
        ("'a \"b\" c'", 'a "b" c'),
        ("'  spaced  '", "  spaced  "),
        ("'AND OR NOT ( ) = <>'", "AND OR NOT ( ) = <>"),
    ],
)
def test_quoted_strings(literal: str, value: str) -> None:
    assert where(f"deviceId = {literal}") == device(value)


@pytest.mark.parametrize(
    ("literal", "value"), [("true", True), ("TRUE", True), ("false", False), ("False", False)]
)
def test_booleans(literal: str, value: bool) -> None:
    assert where(f"capabilities.iotEdge = {literal}") == Comparison(
        "capabilities.iotEdge", "=", value
    )


@pytest.mark.parametrize("field", ["deviceId", "capabilities.iotEdge"])
@pytest.mark.parametrize("literal", ["null", "NULL"])
def test_null_compares_with_any_field(field: str, literal: str) -> None:
    assert where(f"{field} != {literal}") == Comparison(field, "!=", None)


@pytest.mark.parametrize(
    "condition",
    [
        "capabilities.iotEdge = 'x'",
        "capabilities.iotEdge = 'true'",
        "deviceId = true",
        "registrationId <> false",
    ],
)
def test_values_must_have_the_field_type(condition: str) -> None:
    with pytest.raises(InvalidQuery, match="is compared with"):
        where(condition)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("deviceId", "deviceId"),
        ("DEVICEID", "deviceId"),
        ("enrollments.deviceId", "deviceId"),
        ("c.deviceId", "deviceId"),
        ("C.DeviceId", "deviceId"),
        ("Enrollments.attestation.type", "attestation.type"),
        ("c.capabilities.iotEdge", "capabilities.iotEdge"),
        ("registrationid", "registrationId"),
    ],
)
def test_field_names_and_prefixes(name: str, field: str) -> None:
    condition = where(f"{name} = null")
    assert isinstance(condition, Comparison)
    assert condition.field == field


@pytest.mark.parametrize("name", ["color", "device", "x.deviceId", "attestation", "etag"])
def test_unknown_field_is_refused(name: str) -> None:
    with pytest.raises(InvalidQuery, match="cannot filter on"):
        where(f"{name} = 'a'")


@pytest.mark.parametrize(
    "text",
    [
        "SELECT * FROM enrollments extra",
        "SELECT * FROM enrollments, groups",
        "SELECT * WHERE deviceId = 'a' )",
        "SELECT * WHERE deviceId = 'a' deviceId = 'b'",
        "SELECT * *",
    ],
)
def test_trailing_garbage_is_refused(text: str) -> None:
    with pytest.raises(InvalidQuery, match="unexpected"):
        parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "SELECT",
        "SELECT deviceId",
        "SELECT deviceId FROM enrollments",
        "DELETE * FROM enrollments",
        "* FROM enrollments",
        "SELECT * FROM",
        "SELECT * FROM 'enrollments'",
        "SELECT * WHERE",
        "SELECT * WHERE deviceId",
        "SELECT * WHERE deviceId =",
        "SELECT * WHERE deviceId >= 'a'",
        "SELECT * WHERE deviceId LIKE 'a'",
        "SELECT * WHERE deviceId = abc",
        "SELECT * WHERE deviceId = 12",
        "SELECT * WHERE 'a' = deviceId",
        "SELECT * WHERE (deviceId = 'a'",
        "SELECT * WHERE deviceId = 'a' AND",
        "SELECT * WHERE NOT",
        "SELECT * WHERE ()",
        "SELECT * WHERE deviceId = 'unterminated",
        "SELECT * ;",
        "SELECT * -- comment",
    ],
)
def test_malformed_queries_are_refused(text: str) -> None:
    with pytest.raises(InvalidQuery):
        parse(text)


def test_over_long_query_is_refused() -> None:
    prefix = "SELECT * WHERE deviceId = '"
    longest = prefix + "a" * (MAX_QUERY_LENGTH - len(prefix) - 1) + "'"
    assert len(longest) == MAX_QUERY_LENGTH
    assert where(longest[len("SELECT * WHERE ") :]) is not None
    with pytest.raises(InvalidQuery, match="longer than"):
        parse(longest[:-1] + "a'")
    with pytest.raises(InvalidQuery, match="longer than"):
        parse("SELECT *" + " " * MAX_QUERY_LENGTH)


def test_moderate_nesting_is_fine() -> None:
    depth = 40
    condition = where("(" * depth + "deviceId = 'a'" + ")" * depth)
    assert condition == device("a")
    assert where("NOT " * depth + "deviceId = 'a'") is not None


@pytest.mark.parametrize(
    "condition",
    [
        "(" * 400 + "deviceId = 'a'" + ")" * 400,
        "(" * 2000,
        "NOT " * 1000 + "deviceId = 'a'",
        "NOT (" * 600 + "deviceId = 'a'" + ")" * 600,
    ],
)
def test_deep_nesting_is_refused_not_a_crash(condition: str) -> None:
    with pytest.raises(InvalidQuery):
        where(condition)


# --- properties ----------------------------------------------------------------------------

strings = st.text(max_size=12)
comparisons = st.builds(
    Comparison,
    st.sampled_from([name for name, kind in ENROLLMENT_QUERY_FIELDS.items() if kind is str]),
    st.sampled_from(["=", "!="]),
    strings | st.none(),
) | st.builds(
    Comparison,
    st.just("capabilities.iotEdge"),
    st.sampled_from(["=", "!="]),
    st.booleans() | st.none(),
)
conditions = st.recursive(
    comparisons,
    lambda children: (
        children.map(Not)
        | st.builds(
            BooleanOp,
            st.sampled_from(["and", "or"]),
            st.lists(children, min_size=2, max_size=3).map(tuple),
        )
    ),
    max_leaves=8,
)


def render_value(value: Value, quote: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote + value.replace(quote, quote * 2) + quote


def render(condition: Condition, quote: str) -> str:
    match condition:
        case Comparison(field=field, operator=operator, value=value):
            return f"{field} {operator} {render_value(value, quote)}"
        case Not(operand=operand):
            return f"NOT ({render(operand, quote)})"
        case BooleanOp(operator=operator, operands=operands):
            return f" {operator.upper()} ".join(f"({render(item, quote)})" for item in operands)


@FAST
@given(conditions, st.sampled_from(["'", '"']))
def test_rendered_conditions_parse_back(condition: Condition, quote: str) -> None:
    assert where(render(condition, quote)) == condition


vocabulary = st.sampled_from(
    [
        "SELECT",
        "*",
        "FROM",
        "enrollments",
        "WHERE",
        "deviceId",
        "c.registrationId",
        "capabilities.iotEdge",
        "color",
        "=",
        "!=",
        "<>",
        ">",
        "AND",
        "OR",
        "NOT",
        "(",
        ")",
        "'a'",
        "'it''s'",
        '"x"',
        "'open",
        "true",
        "null",
        "12",
        ",",
        ";",
    ]
)


@FAST
@given(
    st.text(max_size=200)
    | st.lists(vocabulary | st.text(max_size=3), max_size=20).map(" ".join)
    | st.lists(vocabulary, max_size=20).map(lambda words: "SELECT * WHERE " + " ".join(words))
)
def test_parser_raises_only_invalid_query(text: str) -> None:
    try:
        query = parse(text)
    except InvalidQuery:
        return
    assert isinstance(query, Query)
