"""DPS topics over MQTT, as each SDK writes and parses them."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpsd.mqtt.topics import (
    InvalidTopic,
    OperationStatusRequest,
    RegisterRequest,
    is_response_filter,
    parse_request,
    response_topic,
)


def test_requests_as_the_sdks_send_them() -> None:
    assert parse_request("$dps/registrations/PUT/iotdps-register/?$rid=42") == RegisterRequest("42")
    uuid_rid = "$dps/registrations/PUT/iotdps-register/?%24rid=7c1f-aa"
    assert parse_request(uuid_rid) == RegisterRequest("7c1f-aa")
    poll = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=9&operationId=4.abc.def"
    assert parse_request(poll) == OperationStatusRequest("9", "4.abc.def")


@pytest.mark.parametrize(
    "topic",
    [
        "devices/dev-1/messages/events/",
        "$dps/registrations/PUT/iotdps-register/",
        "$dps/registrations/PUT/iotdps-register/?$rid=",
        "$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2",
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
        "$dps/registrations/PUT/iotdps-register/?$rid=" + "x" * 129,
        "$dps/registrations/PUT/iotdps-register/?garbage",
    ],
)
def test_other_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        parse_request(topic)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    rid=st.text(min_size=1, max_size=40),
    operation_id=st.text(min_size=1, max_size=60),
    escape=st.booleans(),
)
def test_properties_read_as_a_query_string_reads(rid: str, operation_id: str, escape: bool) -> None:
    """The properties mean what the standard library's query-string reader says they do."""
    if escape:
        rid, operation_id = quote(rid, safe=""), quote(operation_id, safe="")
    query = f"$rid={rid}&operationId={operation_id}"
    topic = f"$dps/registrations/GET/iotdps-get-operationstatus/?{query}"
    try:
        expected = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        expected = None
    if expected is None or len(expected) != 2 or not 0 < len(expected["$rid"]) <= 128:
        with pytest.raises(InvalidTopic):
            parse_request(topic)
        return
    if not expected.get("operationId"):
        with pytest.raises(InvalidTopic):
            parse_request(topic)
        return
    assert parse_request(topic) == OperationStatusRequest(expected["$rid"], expected["operationId"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    status=st.sampled_from([200, 202, 401, 429]),
    rid=st.text(min_size=1, max_size=64),
    retry=st.none() | st.integers(1, 300),
)
def test_responses_parse_in_every_sdk(status: int, rid: str, retry: int | None) -> None:
    topic = response_topic(status, rid, retry)
    # Python: the status is the 4th segment, the properties follow the second "$".
    assert topic.count("$") == 2
    assert topic.split("/")[3] == str(status)
    properties = dict(pair.split("=", 1) for pair in topic.split("$")[2].split("&"))
    assert unquote(properties["rid"]) == rid
    # C#: "$rid" comes first; Node and C look for "retry-after" in lower case.
    assert topic.startswith(f"$dps/registrations/res/{status}/?$rid=")
    assert ("retry-after" in properties) == (retry is not None)


def test_response_filters() -> None:
    assert is_response_filter("$dps/registrations/res/#")
    assert not is_response_filter("#")
    assert not is_response_filter("$dps/registrations/PUT/#")
