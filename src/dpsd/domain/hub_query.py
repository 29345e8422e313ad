"""The query language of IoT hubs, reduced to what dpsd's built-in hubs answer.

Accepted: ``SELECT * FROM devices [WHERE condition]`` and
``SELECT COUNT() [AS name] FROM devices [WHERE condition]``. A condition compares a field
(``deviceId``, ``status``, ``capabilities.iotEdge``, ``tags.<path>``,
``properties.desired.<path>``, ``properties.reported.<path>``) with a quoted string, a
number, ``true``/``false`` or ``null`` using ``= != <> < > <= >=``; conditions combine with
AND, OR, NOT and parentheses. Keywords and the names of the fixed fields are
case-insensitive; the paths below ``tags`` and the properties are a twin's own keys and
match exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from dpsd.domain import query_grammar as grammar
from dpsd.domain.errors import InvalidQuery
from dpsd.domain.hub_device import HubDevice

MAX_QUERY_LENGTH = 4096
MAX_NESTING = 20
DEFAULT_COUNT_ALIAS = "$1"

Scalar = str | int | float | bool | None
Operator = Literal["=", "!=", "<", ">", "<=", ">="]
FieldPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    """``path`` names a field of the twin document, e.g. ``("tags", "site", "floor")``."""

    path: FieldPath
    operator: Operator
    value: Scalar


Condition: TypeAlias = grammar.Condition[Comparison]
Not = grammar.Not
BooleanOp = grammar.BooleanOp


@dataclass(frozen=True, slots=True)
class HubQuery:
    """``count_alias``: for ``SELECT COUNT()``, the name of the one column it answers
    (``$1`` unless ``AS`` names it); None for ``SELECT *``."""

    where: Condition | None
    count_alias: str | None = None


_FIXED_FIELDS: dict[str, FieldPath] = {
    "deviceid": ("deviceId",),
    "status": ("status",),
    "capabilities.iotedge": ("capabilities", "iotEdge"),
}
_SECTIONS: dict[str, FieldPath] = {
    "tags": ("tags",),
    "properties.desired": ("properties", "desired"),
    "properties.reported": ("properties", "reported"),
}
_FIELDS_HELP = (
    "deviceId, status, capabilities.iotEdge, tags.<name>, properties.desired.<name>, "
    "properties.reported.<name>"
)
_RESERVED = frozenset({"select", "from", "where", "and", "or", "not", "as", "count"})
_COMPARISONS: dict[str, Operator] = {
    "=": "=",
    "!=": "!=",
    "<>": "!=",
    "<": "<",
    ">": ">",
    "<=": "<=",
    ">=": ">=",
}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
      | (?P<number>-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
      | (?P<op><=|>=|!=|<>|=|<|>|\(|\)|\*|,)
      | (?P<word>[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z0-9_$]+)*)
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


class _Parser:
    def __init__(self, tokens: grammar.TokenStream) -> None:
        self.tokens = tokens
        self.conditions = grammar.ConditionParser(tokens, self.comparison, MAX_NESTING)

    def query(self) -> HubQuery:
        tokens = self.tokens
        if not tokens.keyword("select"):
            raise InvalidQuery("a query starts with SELECT")
        count_alias = self.projection()
        if not tokens.keyword("from"):
            found = tokens.peek()
            raise InvalidQuery(
                f"expected FROM devices, found {found[1]!r}" if found else "expected FROM devices"
            )
        kind, source = tokens.take()
        if kind != "word" or source.lower() != "devices":
            raise InvalidQuery(f"dpsd's IoT hubs are queried FROM devices only, not {source!r}")
        where = self.conditions.disjunction() if tokens.keyword("where") else None
        tokens.end(": only a WHERE clause may follow the collection (no GROUP BY or ORDER BY)")
        return HubQuery(where=where, count_alias=count_alias)

    def projection(self) -> str | None:
        tokens = self.tokens
        if tokens.symbol("*"):
            return None
        if tokens.keyword("count"):
            tokens.expect("(", "COUNT")
            tokens.expect(")", "COUNT(")
            return self.alias() if tokens.keyword("as") else DEFAULT_COUNT_ALIAS
        found = tokens.peek()
        raise InvalidQuery(
            f"dpsd's IoT hubs answer SELECT * and SELECT COUNT() only, not SELECT "
            f"{found[1] if found else ''}".rstrip()
        )

    def alias(self) -> str:
        kind, name = self.tokens.take()
        if kind != "word" or "." in name or name.lower() in _RESERVED:
            raise InvalidQuery(f"expected a name after AS, found {name!r}")
        return name

    def comparison(self) -> Comparison:
        kind, name = self.tokens.take()
        if kind != "word":
            raise InvalidQuery(f"expected a field name, found {name!r}")
        path = _field_path(name)
        kind, operator = self.tokens.take()
        if kind != "op" or operator not in _COMPARISONS:
            raise InvalidQuery(
                f"expected =, !=, <>, <, >, <= or >= after {name}, found {operator!r}"
            )
        return Comparison(path, _COMPARISONS[operator], self.value())

    def value(self) -> Scalar:
        kind, text = self.tokens.take()
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "word" and text.lower() in {"true", "false"}:
            return text.lower() == "true"
        if kind == "word" and text.lower() == "null":
            return None
        raise InvalidQuery(f"expected a quoted string, a number, true, false or null, not {text!r}")


def _unquote(text: str) -> str:
    """A string literal's value: backslash escapes the next character, and a quote doubled
    stands for itself."""
    quote, body = text[0], text[1:-1]
    return _ESCAPE.sub(lambda match: match.group(1), body.replace(quote * 2, quote))


def _field_path(name: str) -> FieldPath:
    lowered = name.lower()
    if lowered.startswith("devices."):
        name, lowered = name[len("devices.") :], lowered[len("devices.") :]
    if lowered in _FIXED_FIELDS:
        return _FIXED_FIELDS[lowered]
    for prefix, root in _SECTIONS.items():
        if lowered.startswith(prefix + "."):
            return root + tuple(name[len(prefix) + 1 :].split("."))
    raise InvalidQuery(f"cannot filter on {name!r}; fields: {_FIELDS_HELP}")


def parse_hub_query(text: str) -> HubQuery:
    """Parse ``text``; InvalidQuery names what cannot be understood."""
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidQuery(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    return _Parser(grammar.TokenStream(grammar.tokenize(text, _TOKEN))).query()


# --- evaluation -------------------------------------------------------------------------

_MISSING: Any = object()


def matches(condition: Condition, device: HubDevice) -> bool:
    """Whether ``device`` satisfies ``condition``. A field the device lacks compares false
    with every operator but ``!=``; values of different JSON types are never equal, and
    only numbers with numbers and strings with strings are ordered."""
    return _holds(condition, _twin_document(device))


def _twin_document(device: HubDevice) -> dict[str, Any]:
    return {
        "deviceId": device.device_id,
        "status": device.identity.status.value,
        "capabilities": {"iotEdge": device.identity.iot_edge},
        "tags": device.tags,
        "properties": {"desired": device.desired.values, "reported": device.reported.values},
    }


def _holds(condition: Condition, document: dict[str, Any]) -> bool:
    match condition:
        case Comparison(path=path, operator=operator, value=value):
            return _compare(_lookup(document, path), operator, value)
        case Not(operand=operand):
            return not _holds(operand, document)
        case BooleanOp(operator="and", operands=operands):
            return all(_holds(operand, document) for operand in operands)
        case BooleanOp(operands=operands):
            return any(_holds(operand, document) for operand in operands)


def _lookup(document: dict[str, Any], path: FieldPath) -> Any:
    value: Any = document
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _compare(actual: Any, operator: Operator, value: Scalar) -> bool:
    if actual is _MISSING:
        return operator == "!="
    if operator == "=":
        return _equal(actual, value)
    if operator == "!=":
        return not _equal(actual, value)
    kind = _json_kind(actual)
    if kind not in ("number", "string") or kind != _json_kind(value):
        return False
    match operator:
        case "<":
            return bool(actual < value)
        case ">":
            return bool(actual > value)
        case "<=":
            return bool(actual <= value)
        case _:
            return bool(actual >= value)


def _equal(actual: Any, value: Scalar) -> bool:
    kind = _json_kind(actual)
    return kind != "structure" and kind == _json_kind(value) and bool(actual == value)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "structure"
