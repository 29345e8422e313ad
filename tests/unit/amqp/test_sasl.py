"""The server side of SASL: PLAIN, and the shape a server-driven mechanism such as TPM takes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dpsd.amqp.codec import (
    SASL_HEADER,
    SaslChallenge,
    SaslCode,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    SaslResponse,
    read_frame,
)
from dpsd.amqp.sasl import (
    Challenge,
    PlainCredentials,
    PlainMechanism,
    SaslEvidence,
    SaslExchange,
    SaslFailed,
    SaslState,
    Step,
)


def decoded(data: bytes) -> object:
    frame, used = read_frame(data, 512)
    assert used == len(data)
    return frame


def test_plain_reads_authzid_authcid_and_password() -> None:
    init = SaslInit(
        "PLAIN", b"\x000ne00000001/registrations/dev-1\x00SharedAccessSignature sr=x", "h"
    )
    assert PlainMechanism().start(init) == PlainCredentials(
        "", "0ne00000001/registrations/dev-1", "SharedAccessSignature sr=x", "h"
    )


@pytest.mark.parametrize(
    "response", [None, b"", b"only", b"\x00\x00pw", b"a\x00b\x00c\x00d", b"\x00\xff\x00x"]
)
def test_plain_refuses_what_is_not_plain(response: bytes | None) -> None:
    with pytest.raises(SaslFailed):
        PlainMechanism().start(SaslInit("PLAIN", response))


def test_plain_has_no_challenges() -> None:
    with pytest.raises(SaslFailed):
        PlainMechanism().step(b"")


def test_an_exchange_offers_its_mechanisms_and_waits_for_the_decision() -> None:
    exchange = SaslExchange()
    start = exchange.start()
    assert start.startswith(SASL_HEADER)
    assert decoded(start[8:]) == SaslMechanisms(("PLAIN",))
    evidence, sent = exchange.receive(SaslInit("PLAIN", b"\x00user\x00pw"))
    assert evidence == PlainCredentials("", "user", "pw")
    assert sent == b""
    assert exchange.state is SaslState.DECIDING
    assert decoded(exchange.accept()) == SaslOutcome(SaslCode.OK)
    assert exchange.state is SaslState.SUCCEEDED


@pytest.mark.parametrize(
    "frame",
    [SaslInit("EXTERNAL"), SaslResponse(b"early"), SaslInit("PLAIN", b"garbage")],
)
def test_what_cannot_go_on_gets_the_auth_outcome(frame: SaslInit | SaslResponse) -> None:
    exchange = SaslExchange()
    evidence, sent = exchange.receive(frame)
    assert evidence is None
    assert decoded(sent) == SaslOutcome(SaslCode.AUTH)
    assert exchange.failed


@dataclass(frozen=True, slots=True)
class Keys(SaslEvidence):
    endorsement: bytes


@dataclass(frozen=True, slots=True)
class Token(SaslEvidence):
    token: bytes


class ServerDriven:
    """A TPM-shaped mechanism: a fixed first challenge, then evidence the application answers
    with challenges of its own, then the final evidence."""

    def __init__(self) -> None:
        self.responses: list[bytes] = []

    def start(self, init: SaslInit) -> Step:
        self.endorsement = init.initial_response or b""
        return Challenge(b"\x00")

    def step(self, response: bytes) -> Step:
        self.responses.append(response)
        if len(self.responses) == 1:
            return Keys(self.endorsement + response)
        return Token(response)


def test_a_server_driven_mechanism_fits() -> None:
    exchange = SaslExchange({"TPM": ServerDriven, "PLAIN": PlainMechanism})
    assert decoded(exchange.start()[8:]) == SaslMechanisms(("TPM", "PLAIN"))
    evidence, sent = exchange.receive(SaslInit("TPM", b"ek"))
    assert evidence is None
    assert decoded(sent) == SaslChallenge(b"\x00")
    evidence, _ = exchange.receive(SaslResponse(b"srk"))
    assert evidence == Keys(b"eksrk")
    assert decoded(exchange.challenge(b"\x80first")) == SaslChallenge(b"\x80first")
    evidence, _ = exchange.receive(SaslResponse(b"\x00sas"))
    assert evidence == Token(b"\x00sas")
    assert decoded(exchange.refuse()) == SaslOutcome(SaslCode.AUTH)
