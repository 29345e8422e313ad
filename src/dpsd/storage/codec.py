"""Domain records to and from the JSON documents the tables hold."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.registration import DeviceRegistrationState

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_enrollment_decoder = msgspec.json.Decoder(IndividualEnrollment)
_state_decoder = msgspec.json.Decoder(DeviceRegistrationState)


def encode(record: IndividualEnrollment | DeviceRegistrationState) -> str:
    return _encoder.encode(record).decode("utf-8")


def decode_enrollment(document: str) -> IndividualEnrollment:
    return _enrollment_decoder.decode(document)


def decode_registration_state(document: str) -> DeviceRegistrationState:
    return _state_decoder.decode(document)
