"""How deep a JSON value nests, measured without recursion."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.json_depth import nests_deeper_than

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=30,
)


def depth(value: Any) -> int:
    """The reference: a scalar is 0 levels deep, a container one more than its deepest child."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max((depth(child) for child in value), default=0)
    return 0


@given(value=json_values, limit=st.integers(0, 12))
def test_agrees_with_the_recursive_measure(value: Any, limit: int) -> None:
    assert nests_deeper_than(value, limit) == (depth(value) > limit)


def test_depths_no_recursion_could_follow() -> None:
    value: Any = 0
    for _ in range(100_000):
        value = [value]
    assert nests_deeper_than(value, 64)
    assert not nests_deeper_than(value, 100_000)
