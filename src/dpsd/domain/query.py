"""The query language of the DPS service API, reduced to what clients send.

Accepted: ``SELECT * [FROM enrollments] [WHERE condition]``, where a condition compares a
field with a quoted string, ``true``/``false`` or ``null`` using ``=``, ``!=`` or ``<>``, and
conditions combine with AND, OR, NOT and parentheses. Keywords are case-insensitive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from dpsd.domain.errors import InvalidQuery

MAX_QUERY_LENGTH = 4096
MAX_NESTING = 50

Value = str | bool | None


@dataclass(frozen=True, slots=True)
class Comparison:
    field: str
    operator: Literal["=", "!="]
    value: Value


@dataclass(frozen=True, slots=True)
class Not:
    operand: Condition


@dataclass(frozen=True, slots=True)
class BooleanOp:
    operator: Literal["and", "or"]
    operands: tuple[Condition, ...]


Condition = Comparison | Not | BooleanOp


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


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise InvalidQuery(f"cannot read the query at character {position + 1}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], fields: Mapping[str, type]) -> None:
        self.tokens = tokens
        self.position = 0
        self.fields = fields
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise InvalidQuery("the query ends too early")
        self.position += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.position += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        token = self.take()
        if token[0] != kind or token[1].lower() != text:
            raise InvalidQuery(f"expected {text!r} but found {token[1]!r}")

    def query(self) -> Query:
        if not self.keyword("select"):
            raise InvalidQuery("a query starts with SELECT")
        self.expect("op", "*")
        source = None
        if self.keyword("from"):
            kind, name = self.take()
            if kind != "word":
                raise InvalidQuery(f"expected a collection name after FROM, found {name!r}")
            source = name.lower()
        where = self.disjunction() if self.keyword("where") else None
        leftover = self.peek()
        if leftover is not None:
            raise InvalidQuery(f"unexpected {leftover[1]!r} in the query")
        return Query(source=source, where=where)

    def disjunction(self) -> Condition:
        operands = [self.conjunction()]
        while self.keyword("or"):
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else BooleanOp("or", tuple(operands))

    def conjunction(self) -> Condition:
        operands = [self.negation()]
        while self.keyword("and"):
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else BooleanOp("and", tuple(operands))

    def negation(self) -> Condition:
        if self.keyword("not"):
            return Not(self.nested(self.negation))
        token = self.peek()
        if token == ("op", "("):
            self.position += 1
            inner = self.nested(self.disjunction)
            self.expect("op", ")")
            return inner
        return self.comparison()

    def nested(self, parse: Callable[[], Condition]) -> Condition:
        """Parse one level deeper; bounded so that no query can exhaust the stack."""
        if self.depth >= MAX_NESTING:
            raise InvalidQuery(f"the query nests NOT and parentheses deeper than {MAX_NESTING}")
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    def comparison(self) -> Condition:
        kind, name = self.take()
        if kind != "word":
            raise InvalidQuery(f"expected a field name, found {name!r}")
        field = _canonical_field(name, self.fields)
        kind, operator = self.take()
        if kind != "op" or operator not in {"=", "!=", "<>"}:
            raise InvalidQuery(f"expected =, != or <> after {name}, found {operator!r}")
        value = self.value()
        expected = self.fields[field]
        if value is not None and type(value) is not expected:
            wanted = "true or false" if expected is bool else "a quoted string"
            raise InvalidQuery(f"{field} is compared with {wanted}, not {value!r}")
        return Comparison(field, "=" if operator == "=" else "!=", value)

    def value(self) -> Value:
        kind, text = self.take()
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
    return _Parser(_tokenize(text), fields).query()


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
