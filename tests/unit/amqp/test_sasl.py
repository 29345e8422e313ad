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
    TpmKeysReceived,
    TpmMechanism,
    TpmSegmentTaken,
    TpmToken,
    tpm_segments,
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
    assert decoded(start[8:]) == SaslMechanisms(("PLAIN", "TPM"))
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


EK = bytes(range(256)) + b"\x00\x00" * 30  # binary, with zero bytes in it


def test_the_tpm_exchange_byte_by_byte() -> None:
    """amqp.md section 4: init, 0x00, SRK, the blob in 0x80 and 0xC1 segments, the token."""
    exchange = SaslExchange()
    evidence, sent = exchange.receive(SaslInit("TPM", b"\x000ne00000001\x00dev-1\x00" + EK))
    assert evidence is None
    assert decoded(sent) == SaslChallenge(b"\x00")
    evidence, sent = exchange.receive(SaslResponse(b"\x00srk-bytes"))
    assert evidence == TpmKeysReceived("0ne00000001", "dev-1", EK, b"srk-bytes")
    assert sent == b""
    first, last = tpm_segments(bytes(766))
    assert (first[0], last[0], len(first), len(last)) == (0x80, 0xC1, 384, 384)
    frame = exchange.challenge(first)
    assert len(frame) <= 512
    assert decoded(frame) == SaslChallenge(first)
    evidence, _ = exchange.receive(SaslResponse(b"\x00"))
    assert evidence == TpmSegmentTaken()
    assert decoded(exchange.challenge(last)) == SaslChallenge(last)
    evidence, _ = exchange.receive(SaslResponse(b"\x00SharedAccessSignature sr=x"))
    assert evidence == TpmToken("0ne00000001", "dev-1", "SharedAccessSignature sr=x")
    assert decoded(exchange.accept()) == SaslOutcome(SaslCode.OK)


def test_the_largest_blob_fits_two_512_byte_frames() -> None:
    exchange = SaslExchange()
    for segment in tpm_segments(bytes(972)):
        assert len(exchange.challenge(segment)) <= 512
    with pytest.raises(ValueError, match="more than 2"):
        tpm_segments(bytes(973))


@pytest.mark.parametrize(
    "init",
    [
        None,
        b"",
        b"\x00scope\x00dev",
        b"x\x00scope\x00dev\x00ek",
        b"\x00\x00dev\x00ek",
        b"\x00scope\x00\xff\x00ek",
        b"\x00scope\x00dev\x00",
    ],
)
def test_a_tpm_init_that_is_not_dps_is_refused(init: bytes | None) -> None:
    with pytest.raises(SaslFailed):
        TpmMechanism().start(SaslInit("TPM", init))


@pytest.mark.parametrize(
    "responses",
    [
        [b"srk"],
        [b"\x00"],
        [b"\x00srk", b"\x01"],
        [b"\x00srk", b"\x00", b"\x00\xff"],
        [b"\x00srk", b"\x00", b"\x00t", b"\x00"],
    ],
)
def test_tpm_responses_out_of_shape_are_refused(responses: list[bytes]) -> None:
    mechanism = TpmMechanism()
    mechanism.start(SaslInit("TPM", b"\x00scope\x00dev\x00ek"))
    for response in responses[:-1]:
        mechanism.step(response)
    with pytest.raises(SaslFailed):
        mechanism.step(responses[-1])
