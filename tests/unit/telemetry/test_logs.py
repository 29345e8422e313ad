"""The two log formats: facts named by the message stay in it, the others follow as
key=value (text) or keys (JSON); the tracking id of the request being served comes along;
text lines cannot be forged; other libraries are heard from warnings up."""

from __future__ import annotations

import enum
import json
import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from dpsd.telemetry.logs import LogFormat, LogLevel, printable, text_value, timestamp
from dpsd.telemetry.tracking import TRACKING_ID, current_tracking_id, new_tracking_id, tracking
from tests.log_capture import captured_logs, json_lines

logger = logging.getLogger("dpsd.test")
FACTS = {"method": "GET", "status": 404, "error": "404201", "operation": "GET /enrollments/{id}"}


def test_a_text_line_names_the_facts_its_message_does_not() -> None:
    with captured_logs(LogFormat.TEXT) as stream, tracking("abc-123"):
        logger.info("%(method)s %(status)d", FACTS)
    line = stream.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    dpsd\.test: GET 404  "
        r'error=404201 operation="GET /enrollments/\{id\}" tracking_id=abc-123',
        line,
    ), line


def test_a_json_line_has_every_fact_as_a_key() -> None:
    with captured_logs(LogFormat.JSON) as stream, tracking("abc-123"):
        logger.warning("%(method)s %(status)d", {**FACTS, "client": None})
    (line,) = json_lines(stream)
    assert line == {
        "time": line["time"],
        "level": "WARNING",
        "logger": "dpsd.test",
        "message": "GET 404",
        **FACTS,
        "tracking_id": "abc-123",
    }


def test_a_worker_s_lines_name_it_last() -> None:
    with captured_logs(LogFormat.TEXT, worker=2) as stream, tracking("abc-123"):
        logger.info("%(method)s %(status)d", FACTS)
    assert stream.getvalue().rstrip("\n").endswith(" tracking_id=abc-123 worker=2")
    with captured_logs(LogFormat.JSON, worker=3) as stream:
        logger.info("%(method)s %(status)d", {**FACTS, "worker": "forged"})
    (line,) = json_lines(stream)
    assert line["worker"] == 3
    with captured_logs(LogFormat.JSON) as stream:
        logger.info("%(method)s %(status)d", FACTS)
    assert "worker" not in json_lines(stream)[0]


def test_facts_cannot_overwrite_the_line_s_own_keys() -> None:
    with captured_logs(LogFormat.JSON) as stream:
        logger.info("hello %(message)s", {"message": "x", "level": "forged"})
    (line,) = json_lines(stream)
    assert (line["message"], line["level"]) == ("hello x", "INFO")


def test_a_traceback_follows_the_line() -> None:
    for log_format in LogFormat:
        with captured_logs(log_format) as stream:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("it failed")
        assert "ValueError: boom" in stream.getvalue()
    assert "ValueError: boom" in json.loads(stream.getvalue())["exception"]


def test_text_lines_cannot_be_forged() -> None:
    with captured_logs(LogFormat.TEXT) as stream:
        logger.info("device %(id)s refused", {"id": "x\nINFO fake line", "reason": "a\rb"})
    assert stream.getvalue().count("\n") == 1
    assert 'device x\\nINFO fake line refused  reason="a\\rb"' in stream.getvalue()
    assert printable("plain é") == "plain é"
    assert printable("\x1b[31m") == "\\x1b[31m"


def test_values_are_bare_when_they_are_one_word() -> None:
    assert text_value("hub1.example:8443") == "hub1.example:8443"
    assert text_value(12.345) == "12.3"
    assert text_value("two words") == '"two words"'
    assert text_value("") == '""'
    assert text_value('say "hi"') == '"say \\"hi\\""'


def test_levels_apply_to_dpsd_and_other_libraries_speak_from_warnings() -> None:
    with captured_logs(LogFormat.JSON, LogLevel.WARNING) as stream:
        logger.info("hidden")
        logger.warning("shown")
        logging.getLogger("uvicorn.error").info("hidden too")
        logging.getLogger("uvicorn.error").warning("shown too")
    assert [line["message"] for line in json_lines(stream)] == ["shown", "shown too"]
    with captured_logs(LogFormat.JSON, LogLevel.DEBUG) as stream:
        logger.debug("debug of dpsd")
        logging.getLogger("httpx").info("a request")
    assert [line["message"] for line in json_lines(stream)] == ["debug of dpsd"]


def test_tracking_ids() -> None:
    assert TRACKING_ID.get() is None
    with tracking() as outer:
        assert current_tracking_id() == outer
        with tracking("inner"):
            assert current_tracking_id() == "inner"
        assert current_tracking_id() == outer
    assert TRACKING_ID.get() is None
    assert current_tracking_id() != current_tracking_id()  # a new one outside any request
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", new_tracking_id()
    )


def test_timestamps_are_utc_to_the_millisecond() -> None:
    assert timestamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert timestamp(1_700_000_000.0) == "2023-11-14T22:13:20.000Z"


class Kind(enum.StrEnum):
    ASSIGNED = "assigned"


@given(
    value=st.one_of(
        st.text(max_size=20),
        st.integers(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(Kind),
    )
)
def test_a_fact_in_a_text_line_is_written_as_text_value_writes_it(value: object) -> None:
    with captured_logs(LogFormat.TEXT) as stream:
        logger.info("line", {"fact": value, "last": 1})
    assert f"  fact={text_value(value)} last=1" in stream.getvalue()
