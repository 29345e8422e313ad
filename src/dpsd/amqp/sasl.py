"""The server side of a SASL exchange, sans I/O, and the mechanisms dpsd offers.

A mechanism turns the client's ``sasl-init`` and each ``sasl-response`` into either a
challenge to send back at once, or evidence for the application to judge. The application
then accepts, refuses, or sends a challenge of its own (``SaslExchange.challenge``), whose
answer goes back to the mechanism: that is how a mechanism whose challenges depend on the
enrollment fits in (DPS's ``TPM``: the EK and SRK first, then an activation blob in two
segments, then a SAS token signed with the key inside it). ``PLAIN`` and ``TPM`` are offered.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from dpsd.amqp.codec import (
    SASL_HEADER,
    SaslChallenge,
    SaslCode,
    SaslFrame,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    SaslResponse,
    encode_frame,
)


class SaslFailed(Exception):
    """The exchange cannot go on; the client gets an ``auth`` outcome."""


@dataclass(frozen=True, slots=True)
class SaslEvidence:
    """What a mechanism learnt from the client, for the application to judge."""


@dataclass(frozen=True, slots=True)
class PlainCredentials(SaslEvidence):
    """RFC 4616: DPS devices send ``{idScope}/registrations/{registrationId}`` and their SAS
    token; ``hostname`` is the sasl-init hostname, when the client sends one."""

    authzid: str
    authcid: str
    password: str
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge a mechanism sends by itself."""

    data: bytes


Step = Challenge | SaslEvidence


class SaslMechanism(Protocol):
    def start(self, init: SaslInit) -> Step:
        """The client's sasl-init."""
        ...

    def step(self, response: bytes) -> Step:
        """A sasl-response to the last challenge."""
        ...


class PlainMechanism:
    def start(self, init: SaslInit) -> Step:
        parts = (init.initial_response or b"").split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            raise SaslFailed("PLAIN wants authzid NUL authcid NUL password")
        try:
            authzid, authcid, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError as error:
            raise SaslFailed("PLAIN credentials are not UTF-8") from error
        return PlainCredentials(authzid, authcid, password, init.hostname)

    def step(self, response: bytes) -> Step:
        raise SaslFailed("PLAIN has no challenges")


@dataclass(frozen=True, slots=True)
class TpmKeysReceived(SaslEvidence):
    """DPS's ``TPM`` mechanism, once the client's init and first response came: the device
    it names and its EK and SRK (TPM2B_PUBLIC bytes). The application answers with the
    activation blob in two challenges (``tpm_segments``), or decides."""

    id_scope: str
    registration_id: str
    endorsement_key: bytes
    storage_root_key: bytes


@dataclass(frozen=True, slots=True)
class TpmSegmentTaken(SaslEvidence):
    """The client took the blob's first segment: the second is due."""


@dataclass(frozen=True, slots=True)
class TpmToken(SaslEvidence):
    """The SAS token the device signed with the key of the blob."""

    id_scope: str
    registration_id: str
    token: str


MAX_TPM_SEGMENT = 486
"""Blob bytes per challenge: a 512-byte SASL frame less its header, descriptor, list,
binary and control byte (the C SDK's limit)."""
_FIRST_SEGMENT = 0x80  # segment, sequence 0
_LAST_SEGMENT = 0xC1  # segment, last, sequence 1


def tpm_segments(blob: bytes) -> tuple[bytes, bytes]:
    """The blob in the two challenges every SDK takes (Java accepts exactly two)."""
    if len(blob) > 2 * MAX_TPM_SEGMENT:
        raise ValueError(f"an activation blob of {len(blob)} bytes takes more than 2 challenges")
    half = (len(blob) + 1) // 2
    return bytes([_FIRST_SEGMENT]) + blob[:half], bytes([_LAST_SEGMENT]) + blob[half:]


class TpmMechanism:
    """DPS's ``TPM``: init ``0 idScope 0 registrationId 0 EK``, challenge ``0``, response
    ``0 SRK``; then the application's two segments (the first answered with ``0``), and the
    response ``0 SAS-token``."""

    def __init__(self) -> None:
        self._device: tuple[str, str] | None = None
        self._endorsement_key = b""
        self._responses = 0

    def start(self, init: SaslInit) -> Step:
        data = init.initial_response or b""
        parts = data[1:].split(b"\x00", 2)
        if not data.startswith(b"\x00") or len(parts) != 3 or not all(parts):
            raise SaslFailed("TPM wants 0 idScope 0 registrationId 0 endorsementKey")
        try:
            self._device = (parts[0].decode("utf-8"), parts[1].decode("utf-8"))
        except UnicodeDecodeError as error:
            raise SaslFailed("the TPM init's names are not UTF-8") from error
        self._endorsement_key = parts[2]
        return Challenge(b"\x00")

    def step(self, response: bytes) -> Step:
        assert self._device is not None
        self._responses += 1
        match self._responses:
            case 1 if response[:1] == b"\x00" and len(response) > 1:
                return TpmKeysReceived(*self._device, self._endorsement_key, response[1:])
            case 2 if response == b"\x00":
                return TpmSegmentTaken()
            case 3 if response[:1] == b"\x00" and response[1:].isascii():
                return TpmToken(*self._device, response[1:].decode("ascii"))
        raise SaslFailed(f"TPM response {self._responses} is not what the mechanism expects")


MechanismFactory = Callable[[], SaslMechanism]
MECHANISMS: Mapping[str, MechanismFactory] = {"PLAIN": PlainMechanism, "TPM": TpmMechanism}


class SaslState(enum.Enum):
    AWAITING_INIT = "awaiting sasl-init"
    DECIDING = "the application judges the evidence"
    CHALLENGED = "awaiting sasl-response"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class SaslExchange:
    """One client's exchange, from the server's SASL header to the outcome. Methods return
    the bytes to send; ``receive`` returns the evidence when the application must judge."""

    def __init__(self, mechanisms: Mapping[str, MechanismFactory] = MECHANISMS) -> None:
        self._mechanisms = mechanisms
        self._mechanism: SaslMechanism | None = None
        self.state = SaslState.AWAITING_INIT

    @property
    def failed(self) -> bool:
        return self.state is SaslState.FAILED

    def start(self) -> bytes:
        """The SASL header and the mechanisms offered."""
        return _opening(tuple(self._mechanisms))

    def receive(self, frame: SaslFrame) -> tuple[SaslEvidence | None, bytes]:
        """The evidence to judge, if any, and the bytes to send."""
        try:
            step = self._advance(frame)
        except SaslFailed:
            return None, self.refuse()
        if isinstance(step, Challenge):
            return None, self.challenge(step.data)
        self.state = SaslState.DECIDING
        return step, b""

    def accept(self) -> bytes:
        self.state = SaslState.SUCCEEDED
        return _OUTCOME_OK

    def refuse(self, additional_data: bytes | None = None) -> bytes:
        """The outcome ``auth``, with ``additional_data`` when given (the DPS error body of
        a TPM device the service refused)."""
        self.state = SaslState.FAILED
        if additional_data is None:
            return _OUTCOME_AUTH
        return encode_frame(SaslOutcome(SaslCode.AUTH, additional_data))

    def challenge(self, data: bytes) -> bytes:
        """A challenge (≤ 512 bytes in all, as the C SDK requires); the client's response
        goes to the mechanism."""
        frame = encode_frame(SaslChallenge(data))
        self.state = SaslState.CHALLENGED
        return frame

    def _advance(self, frame: SaslFrame) -> Step:
        match frame:
            case SaslInit() if self.state is SaslState.AWAITING_INIT:
                factory = self._mechanisms.get(frame.mechanism)
                if factory is None:
                    raise SaslFailed(f"mechanism {frame.mechanism!r} is not offered")
                self._mechanism = factory()
                return self._mechanism.start(frame)
            case SaslResponse() if self.state is SaslState.CHALLENGED:
                assert self._mechanism is not None
                return self._mechanism.step(frame.response)
        raise SaslFailed(f"{type(frame).__name__} is out of turn ({self.state.value})")


# The frames every connection sends the same, encoded once.
_OUTCOME_OK = encode_frame(SaslOutcome(SaslCode.OK))
_OUTCOME_AUTH = encode_frame(SaslOutcome(SaslCode.AUTH))


@functools.cache
def _opening(mechanisms: tuple[str, ...]) -> bytes:
    return SASL_HEADER + encode_frame(SaslMechanisms(mechanisms))
