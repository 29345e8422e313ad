"""The public areas of a device's TPM keys (TPM 2.0 ``TPM2B_PUBLIC``), as DPS devices send
their endorsement key (EK) and storage root key (SRK), and the rules dpsd holds them to.

Every SDK creates both keys from the same kind of template: RSA-2048, SHA-256 names,
restricted decryption keys with an AES-128-CFB symmetric definition. The activation blob
dpsd builds (``dpsd.domain.tpm_activation``) assumes exactly that shape, so anything else is
refused with a message naming the field that differs, never guessed at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from dpsd.domain.errors import InvalidAttestation

ALG_RSA = 0x0001
ALG_SHA256 = 0x000B
ALG_AES = 0x0006
ALG_CFB = 0x0043
ALG_NULL = 0x0010
ATTRIBUTE_RESTRICTED = 0x0001_0000
ATTRIBUTE_DECRYPT = 0x0002_0000
ATTRIBUTE_SIGN = 0x0004_0000
RSA_BITS = 2048
AES_BITS = 128
DEFAULT_EXPONENT = 65537
EK_FIELD = "tpm.endorsementKey"
SRK_FIELD = "tpm.storageRootKey"
MAX_PUBLIC_BYTES = 1024
"""More than any RSA-2048 public area takes (316 bytes for the SDKs' EK)."""


@dataclass(frozen=True, slots=True)
class TpmPublicKey:
    """A parsed RSA storage key. ``area``: the TPMT_PUBLIC bytes as sent (what its Name
    hashes); ``modulus`` big-endian, 256 bytes."""

    area: bytes
    modulus: bytes
    exponent: int
    symmetric_bits: int

    @property
    def name(self) -> bytes:
        """The TPM Name: the name algorithm's id, then the digest of the public area."""
        return struct.pack(">H", ALG_SHA256) + hashlib.sha256(self.area).digest()

    @property
    def marshaled(self) -> bytes:
        """TPM2B_PUBLIC: the area with its size in front."""
        return struct.pack(">H", len(self.area)) + self.area

    def same_key(self, other: TpmPublicKey) -> bool:
        """The same RSA key, however either was marshaled (attributes and policies aside)."""
        return self.modulus == other.modulus and self.exponent == other.exponent


class _Reader:
    def __init__(self, data: bytes, where: str) -> None:
        self._data = data
        self._offset = 0
        self._where = where

    def take(self, count: int, what: str) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            raise InvalidAttestation(f"{self._where} ends inside its {what}")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value

    def sized(self, what: str) -> bytes:
        return self.take(self.u16(f"{what} size"), what)

    @property
    def rest(self) -> int:
        return len(self._data) - self._offset


def decode_public_key(text: str, *, field: str) -> TpmPublicKey:
    """A base64 TPM2B_PUBLIC from the wire (``field`` names it in errors)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidAttestation(f"{field} is not valid base64") from error
    return parse_public_key(raw, field=field)


def parse_public_key(raw: bytes, *, field: str) -> TpmPublicKey:
    """A TPM2B_PUBLIC holding an RSA-2048 restricted decryption key with SHA-256 names and
    an AES-128-CFB symmetric definition, and nothing after it."""
    if len(raw) > MAX_PUBLIC_BYTES:
        raise InvalidAttestation(f"{field} is {len(raw)} bytes; a TPM2B_PUBLIC is far shorter")
    outer = _Reader(raw, field)
    area = outer.sized("TPM2B_PUBLIC")
    if outer.rest:
        raise InvalidAttestation(f"{field} has {outer.rest} bytes after its TPM2B_PUBLIC")
    reader = _Reader(area, field)
    _expect(reader.u16("type"), ALG_RSA, field, "type", "RSA (0x0001)")
    _expect(reader.u16("nameAlg"), ALG_SHA256, field, "nameAlg", "SHA-256 (0x000B)")
    attributes = reader.u32("objectAttributes")
    storage = ATTRIBUTE_RESTRICTED | ATTRIBUTE_DECRYPT
    if attributes & storage != storage or attributes & ATTRIBUTE_SIGN:
        raise InvalidAttestation(
            f"{field} is not a restricted decryption key (objectAttributes 0x{attributes:08x})"
        )
    reader.sized("authPolicy")
    _expect(reader.u16("symmetric algorithm"), ALG_AES, field, "symmetric algorithm", "AES")
    symmetric_bits = reader.u16("symmetric keyBits")
    _expect(symmetric_bits, AES_BITS, field, "symmetric keyBits", str(AES_BITS))
    _expect(reader.u16("symmetric mode"), ALG_CFB, field, "symmetric mode", "CFB (0x0043)")
    _expect(reader.u16("scheme"), ALG_NULL, field, "scheme", "NULL (0x0010)")
    _expect(reader.u16("keyBits"), RSA_BITS, field, "keyBits", str(RSA_BITS))
    exponent = reader.u32("exponent") or DEFAULT_EXPONENT
    modulus = reader.sized("unique (the RSA modulus)")
    if len(modulus) != RSA_BITS // 8 or not modulus[0] & 0x80:
        raise InvalidAttestation(f"{field} does not hold a {RSA_BITS}-bit RSA modulus")
    if exponent < 3 or exponent % 2 == 0:
        raise InvalidAttestation(f"{field} has an RSA exponent of {exponent}")
    if reader.rest:
        raise InvalidAttestation(f"{field} has {reader.rest} bytes after its public area")
    return TpmPublicKey(area, modulus, exponent, symmetric_bits)


def _expect(value: int, wanted: int, field: str, what: str, described: str) -> None:
    if value != wanted:
        raise InvalidAttestation(f"{field}: {what} is 0x{value:04x}; dpsd needs {described}")


def registration_id_of(endorsement_key: bytes) -> str:
    """The registration id the C and Node SDKs give a TPM device: the SHA-256 of its EK's
    TPM2B_PUBLIC bytes, in lower-case base32 without padding (52 characters)."""
    digest = hashlib.sha256(endorsement_key).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def key_fingerprint(key: TpmPublicKey) -> str:
    """A short identity of the RSA key (modulus and exponent), for records that must tell
    whether the same TPM asks again; not secret."""
    digest = hashlib.sha256(key.modulus + key.exponent.to_bytes(4, "big")).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True)
class TpmKeys:
    """What a TPM device sends: its EK and SRK, base64 TPM2B_PUBLIC, as on the wire."""

    endorsement_key: str | None = None
    storage_root_key: str | None = None

    def endorsement(self) -> TpmPublicKey:
        if not self.endorsement_key:
            raise InvalidAttestation(f"{EK_FIELD} is required")
        return decode_public_key(self.endorsement_key, field=EK_FIELD)

    def storage_root(self) -> TpmPublicKey:
        if not self.storage_root_key:
            raise InvalidAttestation(f"{SRK_FIELD} is required for TPM attestation")
        return decode_public_key(self.storage_root_key, field=SRK_FIELD)
