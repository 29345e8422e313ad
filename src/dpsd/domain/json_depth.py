"""How deep the JSON dpsd reads may nest: 64 levels of objects and arrays, as .NET's JSON
readers (System.Text.Json, and Json.NET from 13.0) allow by default.

Deeper documents serve no DPS or IoT Hub purpose, and past a few hundred levels Python cannot
even read them back (its recursion limit): a record stored that deep would break every read
that meets it. So values are checked before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dpsd.domain.errors import ValidationError

MAX_JSON_DEPTH = 64

Children = Callable[[Any], Iterable[Any] | None]
"""What a value holds when it is an object or an array; None for anything else."""


class JsonTooDeep(ValidationError):
    def __init__(self, what: str = "The request body") -> None:
        super().__init__(
            f"{what} nests objects and arrays too deep: dpsd reads at most {MAX_JSON_DEPTH} levels"
        )


def json_children(value: Any) -> Iterable[Any] | None:
    if isinstance(value, dict):
        return value.values()
    if isinstance(value, list):
        return value
    return None


def nests_deeper_than(value: Any, limit: int, children: Children = json_children) -> bool:
    """Whether ``value`` holds objects or arrays more than ``limit`` levels deep (a scalar
    is 0 levels, ``[]`` one). Level by level, without recursion: any depth is safe."""
    level = [value]
    for _ in range(limit):
        below: list[Any] = []
        for item in level:
            held = children(item)
            if held is not None:
                below.extend(held)
        if not below:
            return False
        level = below
    return any(children(item) is not None for item in level)
