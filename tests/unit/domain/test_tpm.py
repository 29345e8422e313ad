"""TPM public areas, registration ids and activation blobs (the blobs opened by a TPM
written independently in tests/tpm/soft_tpm.py; tests/e2e opens them with swtpm)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.errors import InvalidAttestation
from dpsd.domain.tpm_activation import activation_blob, kdfa
from dpsd.domain.tpm_public import (
    decode_public_key,
    key_fingerprint,
    parse_public_key,
    registration_id_of,
)
from tests.tpm.soft_tpm import EK_ATTRIBUTES, EK_POLICY, BlobRefused, SoftTpm, rsa_area, tpm2b
from tests.unit.support import FAST

DEVICE = SoftTpm.make(0)
OTHER = SoftTpm.make(1)


def test_the_sdk_keys_parse() -> None:
    ek = parse_public_key(DEVICE.ek, field="tpm.endorsementKey")
    srk = parse_public_key(DEVICE.srk, field="tpm.storageRootKey")
    assert (len(DEVICE.ek), len(DEVICE.srk)) == (316, 284)
    assert ek.exponent == 65537
    assert ek.symmetric_bits == 128
    assert ek.marshaled == DEVICE.ek
    assert ek.name == b"\x00\x0b" + hashlib.sha256(DEVICE.ek[2:]).digest()
    assert not ek.same_key(srk)
    assert decode_public_key(DEVICE.ek_b64, field="ek") == ek


def test_the_same_key_marshaled_otherwise_is_the_same_key() -> None:
    """Another attribute set and no policy: the RSA key is what identifies the EK."""
    bare = tpm2b(rsa_area(DEVICE.ek_key, 0x00030072))
    assert parse_public_key(bare, field="ek").same_key(parse_public_key(DEVICE.ek, field="ek"))
    assert key_fingerprint(parse_public_key(bare, field="ek")) == key_fingerprint(
        parse_public_key(DEVICE.ek, field="ek")
    )


@pytest.mark.parametrize(
    ("area", "named"),
    [
        (rsa_area(DEVICE.ek_key, EK_ATTRIBUTES, EK_POLICY, name_alg=0x0004), "nameAlg"),
        (rsa_area(DEVICE.ek_key, EK_ATTRIBUTES, EK_POLICY, key_bits=4096), "keyBits"),
        (
            rsa_area(DEVICE.ek_key, EK_ATTRIBUTES, symmetric=(0x0006, 256, 0x0043)),
            "symmetric keyBits",
        ),
        (rsa_area(DEVICE.ek_key, EK_ATTRIBUTES, symmetric=(0x0006, 128, 0x0044)), "symmetric mode"),
        (
            rsa_area(DEVICE.ek_key, EK_ATTRIBUTES, symmetric=(0x0025, 128, 0x0043)),
            "symmetric algorithm",
        ),
        (rsa_area(DEVICE.ek_key, 0x00040072), "restricted decryption"),
        (b"\x00\x23" + rsa_area(DEVICE.ek_key, EK_ATTRIBUTES)[2:], "type"),
        (rsa_area(DEVICE.ek_key, EK_ATTRIBUTES)[:-10], "ends inside"),
        (rsa_area(DEVICE.ek_key, EK_ATTRIBUTES) + b"\x00", "after its public area"),
    ],
)
def test_other_shapes_are_refused_naming_the_field(area: bytes, named: str) -> None:
    with pytest.raises(InvalidAttestation, match=named):
        parse_public_key(tpm2b(area), field="tpm.endorsementKey")


def test_bytes_after_the_tpm2b_and_bad_base64_are_refused() -> None:
    with pytest.raises(InvalidAttestation, match="after its TPM2B_PUBLIC"):
        parse_public_key(DEVICE.ek + b"\x00", field="ek")
    with pytest.raises(InvalidAttestation, match="base64"):
        decode_public_key("not base64!", field="tpm.endorsementKey")


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_are_refused_cleanly(raw: bytes) -> None:
    with contextlib.suppress(InvalidAttestation):
        parse_public_key(raw, field="ek")


@FAST
@given(st.integers(min_value=0, max_value=315), st.integers(min_value=1, max_value=255))
def test_a_flipped_byte_of_the_ek_is_refused_or_another_key(offset: int, flip: int) -> None:
    damaged = bytearray(DEVICE.ek)
    damaged[offset] ^= flip
    try:
        key = parse_public_key(bytes(damaged), field="ek")
    except InvalidAttestation:
        return
    original = parse_public_key(DEVICE.ek, field="ek")
    assert key.area != original.area


def test_registration_id_is_lowercase_base32_of_the_ek_digest() -> None:
    registration_id = registration_id_of(DEVICE.ek)
    assert len(registration_id) == 52
    assert registration_id == registration_id.lower()
    padded = registration_id.upper() + "===="
    assert base64.b32decode(padded) == hashlib.sha256(DEVICE.ek).digest()


def test_kdfa_matches_the_tpm_definition_for_two_blocks() -> None:
    key, label, context, bits = b"k" * 32, b"STORAGE", b"u", 384
    expected = b""
    for counter in (1, 2):
        import hmac

        message = struct.pack(">I", counter) + label + b"\0" + context + struct.pack(">I", bits)
        expected += hmac.new(key, message, hashlib.sha256).digest()
    assert kdfa(key, label, context, b"", bits) == expected[:48]


def _keys(device: SoftTpm) -> tuple:  # type: ignore[type-arg]
    return (
        parse_public_key(device.ek, field="ek"),
        parse_public_key(device.srk, field="srk"),
    )


@FAST
@given(st.binary(min_size=32, max_size=32))
def test_the_device_tpm_opens_the_blob_and_finds_the_key(key: bytes) -> None:
    device = SoftTpm.make(0)
    blob = activation_blob(*_keys(device), key)
    assert len(blob) == 766
    assert device.activate(blob) == key


def test_field_sizes_are_those_every_sdk_reads() -> None:
    blob = activation_blob(*_keys(DEVICE), bytes(32))
    sizes, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack(">H", blob[offset : offset + 2])
        sizes.append(size + 2)
        offset += size + 2
    assert sizes == [54, 258, 144, 258, 50, 2]


def test_the_randomness_is_the_one_given() -> None:
    counter = iter(range(1000))

    def random(count: int) -> bytes:
        return bytes([next(counter) % 256]) * count

    first = activation_blob(*_keys(DEVICE), bytes(32), random)
    counter = iter(range(1000))
    # OAEP pads with randomness of its own, so only the fields without it repeat
    second = activation_blob(*_keys(DEVICE), bytes(32), random)
    assert first[-52:] == second[-52:]  # the key's public area and the empty uriInfo


def test_another_tpm_cannot_open_the_blob() -> None:
    blob = activation_blob(*_keys(DEVICE), bytes(32))
    with pytest.raises(ValueError):  # the EK's seed does not decrypt
        SoftTpm.make(1).activate(blob)


def test_a_blob_for_another_srk_is_refused_by_the_credential_binding() -> None:
    ek, _ = _keys(DEVICE)
    _, other_srk = _keys(OTHER)
    blob = activation_blob(ek, other_srk, bytes(32))
    with pytest.raises((BlobRefused, ValueError)):
        DEVICE.activate(blob)
