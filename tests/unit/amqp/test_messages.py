"""DPS requests and answers in AMQP's encoding: both of dpsd's readers give what proton's
Message gives for the shapes the SDKs send, and any bytes are a request or malformed;
answers read back through proton as they were written, the correlation-id's type
unchanged."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proton import Data, Message, symbol, ulong

from dpsd.amqp import messages
from dpsd.amqp.messages import (
    EncodedValue,
    MalformedMessage,
    RequestMessage,
    ResponseMessage,
    decode_request,
    encode_response,
)
from tests.unit.support import FAST

REGISTER = "iotdps-register"

correlation_ids = (
    st.none()
    | st.text(max_size=300)
    | st.binary(max_size=300)
    | st.uuids()
    | st.integers(0, 2**64 - 1).map(ulong)
)
property_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=300)
    | st.text(alphabet="abcdefghij-", max_size=20).map(symbol)
)
application_properties = st.dictionaries(st.text(max_size=30), property_values, max_size=6)
bodies = (
    st.binary(max_size=600)
    | st.text(max_size=300)
    | st.none()
    | st.text(alphabet="abc", max_size=5).map(symbol)
    | st.integers(-5, 5)
    | st.lists(st.integers(0, 9), max_size=3)
)
annotations = st.dictionaries(
    st.text(alphabet="abcxyz:-", min_size=1, max_size=12).map(symbol),
    property_values,
    max_size=3,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "durable": st.booleans(),
        "priority": st.integers(0, 9),
        "ttl": st.floats(0, 1000).map(round),
        "first_acquirer": st.booleans(),
        "delivery_count": st.integers(0, 5),
    },
)


def encoded(
    correlation_id: Any,
    properties: dict[str, Any],
    body: Any,
    header: dict[str, Any] | None = None,
    message_annotations: dict[Any, Any] | None = None,
    delivery_annotations: dict[Any, Any] | None = None,
) -> bytes:
    """A message as the SDKs' AMQP libraries write it (proton here): bytes as a Data
    section, anything else as an AMQP value."""
    message = Message(
        properties=properties,
        body=body,
        inferred=isinstance(body, bytes),
        annotations=message_annotations or None,
        instructions=delivery_annotations or None,
        **(header or {}),
    )
    if correlation_id is not None:
        message.correlation_id = correlation_id
    return bytes(message.encode())


def sent_type(correlation_id: Any) -> str:
    """The AMQP type proton gives a correlation-id of this Python type."""
    return {str: "string", bytes: "binary", uuid.UUID: "uuid", ulong: "ulong"}.get(
        type(correlation_id), "null"
    )


def echoed_type(payload: bytes) -> str:
    """The AMQP type of the correlation-id in an encoded message, read with proton's Data."""
    data = Data()
    rest = payload
    while rest:
        rest = rest[data.decode(rest) :]
    data.rewind()
    while data.next():
        data.enter()
        data.next()
        code = data.get_object()
        data.next()
        if code == 0x73:  # the properties section
            data.enter()
            for _ in range(6):  # to the correlation-id, the sixth field
                data.next()
            return _TYPE_NAMES.get(data.type(), str(data.type()))
        data.exit()
    return "null"


_TYPE_NAMES = {
    None: "null",
    Data.NULL: "null",
    Data.STRING: "string",
    Data.BINARY: "binary",
    Data.UUID: "uuid",
    Data.ULONG: "ulong",
    Data.SYMBOL: "symbol",
}


def read_by_proton(payload: bytes) -> RequestMessage:
    """The request as proton's Message reads it, the independent reading to compare with."""
    message: Any = Message()
    message.decode(payload)
    correlation_id = message.correlation_id
    if isinstance(correlation_id, memoryview):
        correlation_id = bytes(correlation_id)
    body = message.body
    if isinstance(body, memoryview):
        body = bytes(body)
    return RequestMessage(
        correlation_id,
        {str(key): value for key, value in (message.properties or {}).items()},
        body if isinstance(body, bytes | str) else None,
    )


def test_the_sdks_requests_are_read() -> None:
    node = encoded(
        "6f1c7a2e-1c1b-4c7e-9a55-0d0c2e1f8b11",
        {"iotdps-operation-type": REGISTER, "iotdps-forceRegistration": False},
        b'{"registrationId":"dev-1"}',
    )
    c_poll = encoded(
        None,
        {"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": "4.a"},
        b'{"registrationId":"dev-1"}',
    )
    assert messages._read_request(node) == RequestMessage(
        "6f1c7a2e-1c1b-4c7e-9a55-0d0c2e1f8b11",
        {"iotdps-operation-type": REGISTER, "iotdps-forceRegistration": False},
        b'{"registrationId":"dev-1"}',
    )
    assert messages._read_request(c_poll).correlation_id is None
    assert messages._read_request(c_poll).application_properties["iotdps-operation-id"] == "4.a"


@FAST
@given(correlation_ids, application_properties, bodies, headers, annotations, annotations)
def test_requests_of_the_sdks_shapes_are_read_here_as_proton_reads_them(
    correlation_id: Any,
    properties: dict[str, Any],
    body: Any,
    header: dict[str, Any],
    message_annotations: dict[Any, Any],
    delivery_annotations: dict[Any, Any],
) -> None:
    payload = encoded(
        correlation_id, properties, body, header, message_annotations, delivery_annotations
    )
    read = messages._read_request(payload)  # the quick reader takes every SDK shape
    assert read == read_by_proton(payload)
    assert read == messages._read_generally(payload)
    assert type(read.correlation_id) is type(messages._read_generally(payload).correlation_id)


@FAST
@given(correlation_ids, application_properties, bodies, st.integers(0, 10_000), st.binary())
def test_damaged_requests_are_requests_or_malformed(
    correlation_id: Any, properties: dict[str, Any], body: Any, at: int, damage: bytes
) -> None:
    payload = encoded(correlation_id, properties, body)
    cut = at % len(payload)
    for damaged in (payload[:cut], payload[:cut] + damage + payload[cut + len(damage) :]):
        try:
            read = decode_request(damaged)
        except MalformedMessage:
            continue
        assert isinstance(read, RequestMessage)
        assert all(isinstance(key, str) for key in read.application_properties)
        assert read.body is None or isinstance(read.body, bytes | str)


@FAST
@given(
    correlation_ids,
    st.dictionaries(st.text(max_size=30), st.text(max_size=300), max_size=4),
    st.binary(max_size=70_000),
)
def test_answers_read_back_as_written(
    correlation_id: Any, properties: dict[str, str], body: bytes
) -> None:
    payload = encode_response(ResponseMessage(body, correlation_id, properties))
    message = Message()
    message.decode(payload)
    assert isinstance(message.body, memoryview), "one Data section"
    assert bytes(message.body) == body
    assert message.content_type == "application/json"
    assert message.properties == properties
    assert echoed_type(payload) == sent_type(correlation_id)
    echoed = message.correlation_id
    assert (bytes(echoed) if isinstance(echoed, memoryview) else echoed) == correlation_id


def test_an_answer_to_a_uuid_correlation_id_keeps_the_uuid() -> None:
    identifier = uuid.uuid4()
    message = Message()
    message.decode(encode_response(ResponseMessage(b"{}", identifier, {})))
    assert message.correlation_id == identifier


def test_a_correlation_id_of_another_type_is_echoed_in_its_own_encoding() -> None:
    data = Data()  # proton's Message would make a symbol a string: a properties section by hand
    data.put_described()
    data.enter()
    data.put_ulong(0x73)
    data.put_list()
    data.enter()
    for _ in range(5):
        data.put_null()
    data.put_symbol("abc")
    data.exit()
    data.exit()
    request = decode_request(bytes(data.encode()))
    assert request.correlation_id == EncodedValue(b"\xa3\x03abc")
    answer = encode_response(ResponseMessage(b"{}", request.correlation_id, {"a": "b"}))
    assert echoed_type(answer) == "symbol"
    assert b"\xa3\x03abc" in answer
    message = Message()
    message.decode(answer)
    assert bytes(message.body) == b"{}"


def test_sections_named_by_symbol_and_several_data_sections_are_read() -> None:
    data = Data()
    data.put_described()
    data.enter()
    data.put_symbol("amqp:application-properties:map")
    data.put_map()
    data.enter()
    data.put_string("iotdps-operation-type")
    data.put_string(REGISTER)
    data.exit()
    data.exit()
    for part in (b'{"registrationId":', b'"dev-1"}'):
        data.put_described()
        data.enter()
        data.put_ulong(0x75)
        data.put_binary(part)
        data.exit()
    request = decode_request(bytes(data.encode()))
    assert request.application_properties == {"iotdps-operation-type": REGISTER}
    assert request.body == b'{"registrationId":"dev-1"}'


def test_bytes_that_are_no_message_are_malformed_and_nothing_is_an_empty_request() -> None:
    for garbage in (b"\x00\x53\x77\xff", b"\x40", b"\x00\x53\x99\x40"):
        with pytest.raises(MalformedMessage):
            decode_request(garbage)
    assert decode_request(b"") == RequestMessage()
