"""What the DPS and IoT hub query languages share: a token stream, and conditions combined
with AND, OR, NOT and parentheses, nested no deeper than a bound.

Each language brings its own tokens, its comparisons and what may stand around the WHERE
clause; the conditions are generic over the comparison type, so that a DPS condition and a
hub condition cannot be mixed up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeAlias, TypeVar

from dpsd.domain.errors import InvalidQuery

C = TypeVar("C")
Token = tuple[str, str]
"""The name of the pattern group that matched (``word``, ``op``, ``string``, ...) and the
text it matched."""


@dataclass(frozen=True, slots=True)
class Not(Generic[C]):
    operand: Condition[C]


@dataclass(frozen=True, slots=True)
class BooleanOp(Generic[C]):
    operator: Literal["and", "or"]
    operands: tuple[Condition[C], ...]


Condition: TypeAlias = C | Not[C] | BooleanOp[C]


def tokenize(text: str, pattern: re.Pattern[str]) -> list[Token]:
    """``text`` cut by ``pattern``, whose named groups are the token kinds."""
    tokens: list[Token] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = pattern.match(text, position)
        if match is None or match.end() == position:
            raise InvalidQuery(f"cannot read the query at character {position + 1}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class TokenStream:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise InvalidQuery("the query ends too early")
        self.position += 1
        return token

    def keyword(self, word: str) -> bool:
        """Take the next token if it is ``word`` (any case)."""
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.position += 1
            return True
        return False

    def symbol(self, text: str) -> bool:
        """Take the next token if it is the operator ``text``."""
        if self.peek() == ("op", text):
            self.position += 1
            return True
        return False

    def expect(self, text: str, after: str) -> None:
        kind, found = self.take()
        if kind not in ("op", "word") or found.lower() != text:
            raise InvalidQuery(f"expected {text!r} after {after}, found {found!r}")

    def end(self, hint: str = "") -> None:
        """Nothing may follow."""
        leftover = self.peek()
        if leftover is not None:
            raise InvalidQuery(f"unexpected {leftover[1]!r} in the query{hint}")


class ConditionParser(Generic[C]):
    """``disjunction()`` reads ``a OR b AND NOT (c)`` from the stream; ``comparison``
    reads one comparison, in the language's own terms."""

    def __init__(self, tokens: TokenStream, comparison: Callable[[], C], max_nesting: int) -> None:
        self._tokens = tokens
        self._comparison = comparison
        self._max_nesting = max_nesting
        self._depth = 0

    def disjunction(self) -> Condition[C]:
        operands = [self._conjunction()]
        while self._tokens.keyword("or"):
            operands.append(self._conjunction())
        return operands[0] if len(operands) == 1 else BooleanOp("or", tuple(operands))

    def _conjunction(self) -> Condition[C]:
        operands = [self._negation()]
        while self._tokens.keyword("and"):
            operands.append(self._negation())
        return operands[0] if len(operands) == 1 else BooleanOp("and", tuple(operands))

    def _negation(self) -> Condition[C]:
        if self._tokens.keyword("not"):
            return Not(self._nested(self._negation))
        if self._tokens.symbol("("):
            inner = self._nested(self.disjunction)
            self._tokens.expect(")", "a parenthesised condition")
            return inner
        return self._comparison()

    def _nested(self, parse: Callable[[], Condition[C]]) -> Condition[C]:
        """Parse one level deeper; bounded so that no query can exhaust the stack."""
        if self._depth >= self._max_nesting:
            raise InvalidQuery(
                f"the query nests NOT and parentheses deeper than {self._max_nesting}"
            )
        self._depth += 1
        try:
            return parse()
        finally:
            self._depth -= 1
