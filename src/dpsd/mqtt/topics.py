"""The DPS topics of the MQTT device API, parsed and written exactly as the SDKs expect.

Requests: ``$dps/registrations/PUT/iotdps-register/?$rid={rid}`` and
``$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}``.
Responses: ``$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]``, ``$rid`` first
(the C# SDK's pattern) and no other ``$`` (the Python SDK splits the topic on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

RESPONSE_FILTER = "$dps/registrations/res/#"
_REGISTER = "$dps/registrations/PUT/iotdps-register/"
_OPERATION_STATUS = "$dps/registrations/GET/iotdps-get-operationstatus/"
MAX_RID_LENGTH = 128


class InvalidTopic(Exception):
    """A topic outside the DPS registration API."""


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    rid: str


@dataclass(frozen=True, slots=True)
class OperationStatusRequest:
    rid: str
    operation_id: str


DeviceRequest = RegisterRequest | OperationStatusRequest


def _properties(query: str) -> dict[str, str]:
    """The ``name=value`` pairs after the ``?``, percent-decoded: each exactly once, with
    its ``=``, and a ``$rid`` among them."""
    properties: dict[str, str] = {}
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise InvalidTopic("the topic's properties cannot be read")
        if "%" in pair or "+" in pair:
            name, value = unquote(name.replace("+", " ")), unquote(value.replace("+", " "))
        if name in properties:
            raise InvalidTopic(f"the topic repeats {name!r}")
        properties[name] = value
    rid = properties.get("$rid", "")
    if not rid or len(rid) > MAX_RID_LENGTH:
        raise InvalidTopic("the topic needs a $rid of at most 128 characters")
    return properties


def parse_request(topic: str) -> DeviceRequest:
    base, separator, query = topic.partition("?")
    if base not in (_REGISTER, _OPERATION_STATUS):
        raise InvalidTopic(f"{base!r} is not a DPS registration topic")
    if not separator:
        raise InvalidTopic(f"{topic!r} has no properties")
    if base == _REGISTER:
        return RegisterRequest(_properties(query)["$rid"])
    properties = _properties(query)
    operation_id = properties.get("operationId", "")
    if not operation_id:
        raise InvalidTopic("an operation status request needs an operationId")
    return OperationStatusRequest(properties["$rid"], operation_id)


def response_topic(status: int, rid: str, retry_after: int | None = None) -> str:
    if not (rid.isascii() and rid.isdigit()):  # most devices number their requests
        rid = quote(rid, safe="-._~")
    topic = f"$dps/registrations/res/{status}/?$rid={rid}"
    return topic if retry_after is None else f"{topic}&retry-after={retry_after}"


def is_response_filter(topic_filter: str) -> bool:
    """Devices subscribe to ``$dps/registrations/res/#`` (or a narrower filter under it)."""
    return topic_filter == RESPONSE_FILTER or topic_filter.startswith("$dps/registrations/res/")
