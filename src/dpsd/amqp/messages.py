"""DPS request and response messages to and from AMQP's encoding, through proton.

A request's identity is its correlation-id (any AMQP type: Node and C# send strings, C none),
its application-properties (``iotdps-operation-type``, ``iotdps-operation-id``) and its
body (a Data section of JSON, or an AMQP value, which polls carry and dpsd ignores). An
answer is one Data section of JSON with the request's correlation-id, unchanged in type, and
string application-properties: proton would encode a Python int as an AMQP long, which the
C SDK does not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proton import Message

CONTENT_TYPE = "application/json"


class MalformedMessage(ValueError):
    """The bytes of a transfer are not an AMQP message."""


@dataclass(frozen=True, slots=True)
class RequestMessage:
    correlation_id: object = None
    application_properties: Mapping[str, object] = field(default_factory=dict)
    body: bytes | str | None = None


@dataclass(frozen=True, slots=True)
class ResponseMessage:
    body: bytes
    correlation_id: object = None
    application_properties: Mapping[str, str] = field(default_factory=dict)


def decode_request(payload: bytes) -> RequestMessage:
    message: Any = Message()
    try:
        message.decode(payload)
        properties = message.properties or {}
        body = message.body
        correlation_id = message.correlation_id
    except Exception as error:  # proton reads leniently (garbage is an empty message); not always
        raise MalformedMessage(f"not an AMQP message: {error}") from error
    if not isinstance(properties, dict):
        properties = {}
    if isinstance(correlation_id, memoryview):
        correlation_id = bytes(correlation_id)  # a binary id, echoed as binary
    return RequestMessage(
        correlation_id,
        {str(key): value for key, value in properties.items() if isinstance(key, str)},
        _body(body),
    )


def encode_response(response: ResponseMessage) -> bytes:
    message: Any = Message(
        body=response.body,
        inferred=True,  # bytes as a Data section, not an AMQP value
        properties=dict(response.application_properties),
        content_type=CONTENT_TYPE,
    )
    if response.correlation_id is not None:
        message.correlation_id = response.correlation_id
    return bytes(message.encode())


def _body(body: object) -> bytes | str | None:
    if isinstance(body, memoryview | bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body
    return None
