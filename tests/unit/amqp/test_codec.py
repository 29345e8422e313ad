"""The protocol headers and the five SASL frames, as bytes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.amqp.codec import (
    AMQP_HEADER,
    SASL_HEADER,
    ProtocolHeader,
    SaslChallenge,
    SaslCode,
    SaslDecodeError,
    SaslFrame,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    SaslResponse,
    could_be_header,
    encode_frame,
    parse_header,
    read_frame,
)
from tests.unit.support import FAST

symbols = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20)
frames: st.SearchStrategy[SaslFrame] = st.one_of(
    st.builds(SaslMechanisms, st.lists(symbols, min_size=1, max_size=4).map(tuple)),
    st.builds(
        SaslInit,
        symbols,
        st.none() | st.binary(max_size=300),
        st.none() | st.text(max_size=40),
    ),
    st.builds(SaslChallenge, st.binary(max_size=480)),
    st.builds(SaslResponse, st.binary(max_size=480)),
    st.builds(SaslOutcome, st.sampled_from(SaslCode), st.none() | st.binary(max_size=100)),
)


def frame(body: bytes, kind: int = 1) -> bytes:
    return struct.pack(">IBBH", 8 + len(body), 2, kind, 0) + body


def nested_lists(depth: int) -> bytes:
    encoded = b"\x45"
    for _ in range(depth):
        encoded = b"\xc0" + bytes([len(encoded) + 1, 1]) + encoded
    return encoded


def test_headers() -> None:
    assert parse_header(SASL_HEADER) == ProtocolHeader(3, (1, 0, 0))
    assert parse_header(AMQP_HEADER) == ProtocolHeader(0, (1, 0, 0))
    with pytest.raises(SaslDecodeError):
        parse_header(b"HTTP/1.1")
    assert could_be_header(b"AM")
    assert could_be_header(b"AMQP\x07")
    assert not could_be_header(b"GET ")


@FAST
@given(frames)
def test_frames_round_trip(sasl_frame: SaslFrame) -> None:
    encoded = encode_frame(sasl_frame, max_size=4096)
    assert read_frame(encoded, 4096) == (sasl_frame, len(encoded))
    assert read_frame(encoded[:-1], 4096) == (None, 0)


def test_the_mechanisms_frame_is_an_array_of_symbols() -> None:
    assert encode_frame(SaslMechanisms(("PLAIN",))) == frame(
        b"\x00\x53\x40\xc0\x0b\x01\xe0\x08\x01\xa3\x05PLAIN"
    )


def test_frames_sent_fit_in_512_bytes() -> None:
    assert len(encode_frame(SaslChallenge(b"\x80" + b"x" * 486))) == 512
    with pytest.raises(ValueError, match="exceeds 512"):
        encode_frame(SaslChallenge(b"x" * 488))


def test_variants_clients_write_are_read() -> None:
    # A symbolic descriptor, a list32, a single symbol for the mechanisms, a sym32.
    named = (
        b"\x00\xa3\x19amqp:sasl-mechanisms:list\xd0\x00\x00\x00\x0b\x00\x00\x00\x01\xa3\x05PLAIN"
    )
    assert read_frame(frame(named), 512)[0] == SaslMechanisms(("PLAIN",))
    init = (
        b"\x00\x80" + (0x41).to_bytes(8, "big") + b"\xc0\x0d\x02\xb3\x00\x00\x00\x05PLAIN\xa0\x00"
    )
    assert read_frame(frame(init), 512)[0] == SaslInit("PLAIN", b"")
    symbolic_host = b"\x00\x53\x41\xc0\x0c\x03\xa3\x05PLAIN\x40\xa3\x01h"
    assert read_frame(frame(symbolic_host), 512)[0] == SaslInit("PLAIN", None, "h")


def test_an_empty_frame_is_skipped() -> None:
    assert read_frame(frame(b""), 512) == (None, 8)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (struct.pack(">IBBH", 600, 2, 1, 0), "exceeds 512"),
        (struct.pack(">IBBH", 8, 1, 1, 0), "malformed"),
        (struct.pack(">IBBH", 4, 2, 1, 0), "malformed"),
        (frame(b"\x00\x53\x10\x45", kind=0), "frame type 0"),
        (frame(b"\x00\x53\x99\x45"), "not a SASL performative"),
        (frame(b"\x00\x45\x45"), "not a SASL performative"),
        (frame(b"\x53\x41\x45"), "described list"),
        (frame(b"\x00\x53\x41\x45"), "symbol or a string"),
        (frame(b"\x00\x53\x41\xc0\x02\x01\x13"), "unknown AMQP constructor"),
        (frame(b"\x00\x53\x41\xc0\x09\x01\xa3\x05PLAIN\x40"), "do not fill it"),
        (frame(b"\x00\x53\x41\xc0\x08\x01\xa3\x06PLAIN"), "truncated"),
        (frame(b"\x00\x53\x41\xc0\x04\x01\xa3\x01\xff"), "undecodable"),
        (frame(b"\x00\x53\x44\xc0\x02\x01\x41"), "ubyte"),
        (frame(b"\x00\x53\x44\xc0\x03\x01\x50\x09"), "not a valid SaslCode"),
        (frame(b"\x00\x53\x42\xc0\x03\x01\xa1\x00"), "binary"),
        (frame(b"\x00\x53\x41" + nested_lists(5)), "symbol or a string"),
    ],
)
def test_malformed_frames(data: bytes, problem: str) -> None:
    with pytest.raises(SaslDecodeError, match=problem):
        read_frame(data, 512)


@FAST
@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_a_decode_error(data: bytes) -> None:
    with contextlib.suppress(SaslDecodeError):
        read_frame(data, 512)
    with contextlib.suppress(SaslDecodeError):
        read_frame(frame(data), 1024)
