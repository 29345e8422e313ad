"""AMQP's type system as dpsd reads and writes it, checked against proton's encoder."""

from __future__ import annotations

import contextlib
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proton import (
    UNDESCRIBED,
    Array,
    Data,
    Described,
    symbol,
    timestamp,
    ubyte,
    uint,
    ulong,
    ushort,
)

from dpsd.amqp import types
from dpsd.amqp.types import DecodeError, Symbol
from tests.unit.support import FAST

ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 255).map(ubyte),
    st.integers(0, 2**16 - 1).map(ushort),
    st.integers(0, 2**32 - 1).map(uint),
    st.integers(0, 2**64 - 1).map(ulong),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.integers(0, 2**40).map(timestamp),
    st.uuids(),
    st.binary(max_size=300),
    st.text(max_size=300),
    ascii_text.map(symbol),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(ascii_text.map(symbol), inner, max_size=5),
        st.builds(Described, st.integers(0, 2**64 - 1).map(ulong), inner),
    ),
    max_leaves=20,
)


def proton_encoded(value: Any) -> bytes:
    data = Data()
    data.put_object(value)
    return bytes(data.encode())


def plain(value: Any) -> Any:
    """proton's value as dpsd reads it."""
    if isinstance(value, Described):
        return types.Described(int(value.descriptor), plain(value.value))
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, Array):
        return [plain(item) for item in value.elements]
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, symbol):
        return Symbol(value)
    if isinstance(value, bool | float | str | bytes | uuid.UUID) or value is None:
        return value
    return int(value)


@FAST
@given(values)
def test_reads_what_proton_writes(value: Any) -> None:
    encoded = proton_encoded(value)
    decoded, end = types.decode(encoded)
    assert end == len(encoded)
    assert decoded == plain(value)
    assert type(decoded) is type(plain(value))


def test_reads_arrays_and_described_arrays() -> None:
    plain_array = Array(UNDESCRIBED, Data.SYMBOL, symbol("a"), symbol("bc"))
    assert types.decode(proton_encoded(plain_array))[0] == ["a", "bc"]
    described = Array(ulong(0x28), Data.LIST, [1], [])
    assert types.decode(proton_encoded(described))[0] == [
        types.Described(0x28, [1]),
        types.Described(0x28, []),
    ]


@pytest.mark.parametrize(
    ("written", "value"),
    [
        (types.uint(0), 0),
        (types.uint(255), 255),
        (types.uint(256), 256),
        (types.uint(2**32 - 1), 2**32 - 1),
        (types.ulong(2**64 - 1), 2**64 - 1),
        (types.ushort(7), 7),
        (types.ubyte(7), 7),
        (types.boolean(False), False),
        (types.string("é" * 200), "é" * 200),
        (types.symbol("amqp:x"), "amqp:x"),
        (types.binary(b"b" * 300), b"b" * 300),
        (types.list_of(types.uint(1), types.NULL, types.NULL), [1]),
        (types.list_of(types.NULL), []),
        (types.list_of(*[types.string("x" * 50)] * 6), ["x" * 50] * 6),
        (types.map_of([(types.symbol("k"), types.string("v"))]), {"k": "v"}),
        (types.described(0x24, types.list_of()), types.Described(0x24, [])),
    ],
)
def test_reads_what_it_writes(written: bytes, value: object) -> None:
    assert types.decode(written) == (value, len(written))


@FAST
@given(values, st.data())
def test_any_truncation_is_a_decode_error(value: Any, data: st.DataObject) -> None:
    encoded = proton_encoded(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        types.decode(encoded[:cut])


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_are_a_value_or_a_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        types.decode(data)


def test_nesting_beyond_the_limit_is_refused() -> None:
    deep = b"\x00\x53\x01" * (types.MAX_DEPTH + 1) + b"\x40"
    with pytest.raises(DecodeError, match="deep"):
        types.decode(deep)


def test_an_array_of_countless_nulls_is_refused() -> None:
    bomb = b"\xf0" + struct.pack(">II", 5, 2**31) + b"\x40"
    with pytest.raises(DecodeError, match="more items"):
        types.decode(bomb)


def test_a_list_claiming_more_items_than_bytes_is_refused() -> None:
    with pytest.raises(DecodeError):
        types.decode(b"\xd0" + struct.pack(">II", 4, 2**31))


def test_a_map_with_a_list_for_a_key_is_refused() -> None:
    with pytest.raises(DecodeError, match="map key"):
        types.decode(b"\xc1\x03\x02\x45\x40")
