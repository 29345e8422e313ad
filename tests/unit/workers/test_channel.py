"""The lines the supervisor and its workers exchange."""

from __future__ import annotations

import pytest

from dpsd.workers.channel import MAX_LINE, READY, TRUST, ChannelError, Lines, message


def test_messages_arrive_whole_however_the_bytes_are_split() -> None:
    sent = message(READY) + message(TRUST, certificates=["-----BEGIN CERTIFICATE-----\nx"])
    for size in (1, 7, len(sent)):
        lines = Lines()
        received = [
            content
            for start in range(0, len(sent), size)
            for _, content in lines.feed(sent[start : start + size])
        ]
        assert received == [
            {"kind": READY},
            {"kind": TRUST, "certificates": ["-----BEGIN CERTIFICATE-----\nx"]},
        ]


def test_each_message_is_handed_on_as_it_was_read() -> None:
    sent = message(TRUST, certificates=["a"])
    ((line, _),) = Lines().feed(sent)
    assert line == sent


@pytest.mark.parametrize("line", [b"not json\n", b"[1]\n", b'{"kind": 3}\n', b"{}\n"])
def test_what_is_no_message_is_refused(line: bytes) -> None:
    with pytest.raises(ChannelError):
        Lines().feed(line)


def test_a_line_without_end_is_refused_past_the_longest_message() -> None:
    lines = Lines()
    lines.feed(b"x" * MAX_LINE)
    with pytest.raises(ChannelError):
        lines.feed(b"x")
