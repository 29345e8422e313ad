"""The query language of the DPS service API, reduced to what clients send.

Accepted: ``SELECT * [FROM enrollments] [WHERE condition]``, where a condition compares a
field with a quoted string, ``true``/``false`` or ``null`` using ``=``, ``!=`` or ``<>``, and
conditions combine with AND, OR, NOT and parentheses. Keywords are case-insensitive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias

from dpsd.domain import query_grammar as grammar
from dpsd.domain.errors import InvalidQuery

MAX_QUERY_LENGTH = 4096
MAX_NESTING = 50

Value = str | bool | None


@dataclass(frozen=True, slots=True)
class Comparison:
    field: str
    operator: Literal["=", "!="]
    value: Value


Condition: TypeAlias = grammar.Condition[Comparison]
Not = grammar.Not
BooleanOp = grammar.BooleanOp


@dataclass(frozen=True, slots=True)
class Query:
    source: str | None
    where: Condition | None


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
      | (?P<op>!=|<>|=|\(|\)|\*|,)
      | (?P<word>[A-Za-z_$][A-Za-z0-9_.$]*)
    )""",
    re.VERBOSE,
)


class _Parser:
    def __init__(self, tokens: grammar.TokenStream, fields: Mapping[str, type]) -> None:
        self.tokens = tokens
        self.fields = fields
        self.conditions = grammar.ConditionParser(tokens, self.comparison, MAX_NESTING)

    def query(self) -> Query:
        tokens = self.tokens
        if not tokens.keyword("select"):
            raise InvalidQuery("a query starts with SELECT")
        tokens.expect("*", "SELECT")
        source = None
        if tokens.keyword("from"):
            kind, name = tokens.take()
            if kind != "word":
                raise InvalidQuery(f"expected a collection name after FROM, found {name!r}")
            source = name.lower()
        where = self.conditions.disjunction() if tokens.keyword("where") else None
        tokens.end()
        return Query(source=source, where=where)

    def comparison(self) -> Comparison:
        kind, name = self.tokens.take()
        if kind != "word":
            raise InvalidQuery(f"expected a field name, found {name!r}")
        field = _canonical_field(name, self.fields)
        kind, operator = self.tokens.take()
        if kind != "op" or operator not in {"=", "!=", "<>"}:
            raise InvalidQuery(f"expected =, != or <> after {name}, found {operator!r}")
        value = self.value()
        expected = self.fields[field]
        if value is not None and type(value) is not expected:
            wanted = "true or false" if expected is bool else "a quoted string"
            raise InvalidQuery(f"{field} is compared with {wanted}, not {value!r}")
        return Comparison(field, "=" if operator == "=" else "!=", value)

    def value(self) -> Value:
        kind, text = self.tokens.take()
        if kind == "string":
            quote = text[0]
            return text[1:-1].replace(quote * 2, quote)
        if kind == "word" and text.lower() in {"true", "false"}:
            return text.lower() == "true"
        if kind == "word" and text.lower() == "null":
            return None
        raise InvalidQuery(f"expected a quoted string, true, false or null, found {text!r}")


def _canonical_field(name: str, fields: Mapping[str, type]) -> str:
    lowered = name.lower()
    for prefix in ("enrollments.", "c."):
        if lowered.startswith(prefix):
            lowered = lowered[len(prefix) :]
    for known in fields:
        if known.lower() == lowered:
            return known
    raise InvalidQuery(f"cannot filter on {name!r}; fields: {', '.join(sorted(fields))}")


def parse_query(text: str, fields: Mapping[str, type]) -> Query:
    """Parse ``text``; ``fields`` are the names a WHERE clause may use."""
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidQuery(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    return _Parser(grammar.TokenStream(grammar.tokenize(text, _TOKEN)), fields).query()


ENROLLMENT_QUERY_FIELDS: Mapping[str, type] = MappingProxyType(
    {
        "registrationId": str,
        "deviceId": str,
        "provisioningStatus": str,
        "iotHubHostName": str,
        "attestation.type": str,
        "allocationPolicy": str,
        "capabilities.iotEdge": bool,
    }
)

ENROLLMENT_GROUP_QUERY_FIELDS: Mapping[str, type] = MappingProxyType(
    {
        "enrollmentGroupId": str,
        "provisioningStatus": str,
        "iotHubHostName": str,
        "attestation.type": str,
        "allocationPolicy": str,
        "capabilities.iotEdge": bool,
    }
)
