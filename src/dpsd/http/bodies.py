"""JSON request bodies within the size an API accepts: the DPS APIs' (read_json), and the
parts every reader of a body shares."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from dpsd.domain.errors import ValidationError
from dpsd.http.errors import PayloadTooLarge, UnsupportedMediaType, describe_decode_error
from dpsd.http.exchange import HttpRequest
from dpsd.json_decoding import decode_json as decode_within_limits

MAX_BODY_BYTES = 96 * 1024
_EMPTY_BODY = "The request needs a JSON body"
T = TypeVar("T")


async def read_json(request: HttpRequest, model: type[T]) -> T:
    """The body decoded as ``model``; at most 96 KB, as the real service allows."""
    check_declared_length(request, MAX_BODY_BYTES)
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"The request body must be application/json, not {media_type!r}")
    body = await request.body(MAX_BODY_BYTES)
    if body is None:
        raise too_large(MAX_BODY_BYTES)
    if not body:
        raise ValidationError(_EMPTY_BODY)
    return decode_json(body, model)


async def read_optional_json(request: HttpRequest, model: type[T]) -> T | None:
    """Like read_json, but an empty body is None (device clients differ in what they send)."""
    declared = request.headers.get("content-length", "")
    if declared == "0":
        return None
    try:
        return await read_json(request, model)
    except ValidationError as error:
        if error.message == _EMPTY_BODY:
            return None
        raise


def check_declared_length(request: HttpRequest, limit: int) -> None:
    """PayloadTooLarge when the request says its body is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes")


def decode_json(body: bytes | bytearray, model: type[T]) -> T:
    try:
        return decode_within_limits(body, model)
    except msgspec.DecodeError as error:
        raise describe_decode_error(error) from error
