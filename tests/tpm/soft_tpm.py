"""A TPM device in pure Python, for tests that need many fast TPM registrations.

It holds RSA-2048 private keys for its EK and SRK, marshals their public areas as the SDKs'
templates do, and opens an activation blob the way a TPM runs ActivateCredential, Import
and Load: every integrity value checked, the seeds decrypted with the labels the TPM uses,
the key's unique checked against its sensitive area. It shares no code with dpsd, so a blob
that it opens was built to the TPM's rules (the real TPM tests use swtpm).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import struct
import time
from dataclasses import dataclass
from urllib.parse import quote

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_ATTRIBUTES = (
    0x000300B2  # restricted decrypt fixedTPM fixedParent sensitiveDataOrigin adminWithPolicy
)
SRK_ATTRIBUTES = (
    0x00030472  # restricted decrypt fixedTPM fixedParent sensitiveDataOrigin userWithAuth noDA
)


def rsa_area(
    key: rsa.RSAPrivateKey,
    attributes: int,
    policy: bytes = b"",
    *,
    symmetric: tuple[int, int, int] = (0x0006, 128, 0x0043),
    name_alg: int = 0x000B,
    key_bits: int = 2048,
) -> bytes:
    """TPMT_PUBLIC of an RSA storage key (exponent 0: the default 65537)."""
    modulus = key.public_key().public_numbers().n.to_bytes(256, "big")
    return (
        struct.pack(">HHI", 0x0001, name_alg, attributes)
        + struct.pack(">H", len(policy))
        + policy
        + struct.pack(">HHH", *symmetric)
        + struct.pack(">HHI", 0x0010, key_bits, 0)
        + struct.pack(">H", len(modulus))
        + modulus
    )


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _fields(blob: bytes, count: int) -> list[bytes]:
    """``count`` TPM2B fields, without their sizes; the whole blob must be used."""
    fields, offset = [], 0
    for _ in range(count):
        (size,) = struct.unpack(">H", blob[offset : offset + 2])
        fields.append(blob[offset + 2 : offset + 2 + size])
        offset += 2 + size
    assert offset == len(blob), "bytes after the last field"
    return fields


def _kdf(key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    out = b""
    for counter in range(1, 3):
        message = counter.to_bytes(4, "big") + label + b"\0" + context + bits.to_bytes(4, "big")
        out += hmac.new(key, message, hashlib.sha256).digest()
    return out[: bits // 8]


def _cfb_decrypt(key: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), CFB(bytes(16))).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), label)


class BlobRefused(Exception):
    """What a TPM would refuse: an integrity check or a binding that fails."""


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    del index  # one key per index, made once per test session
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class SoftTpm:
    ek_key: rsa.RSAPrivateKey
    srk_key: rsa.RSAPrivateKey
    key: bytes | None = None

    @classmethod
    def make(cls, index: int = 0) -> SoftTpm:
        """Device ``index``'s TPM: the same keys for the same index in one session."""
        return cls(_rsa_key(2 * index), _rsa_key(2 * index + 1))

    @property
    def ek(self) -> bytes:
        return tpm2b(rsa_area(self.ek_key, EK_ATTRIBUTES, EK_POLICY))

    @property
    def srk(self) -> bytes:
        return tpm2b(rsa_area(self.srk_key, SRK_ATTRIBUTES))

    @property
    def ek_b64(self) -> str:
        return base64.b64encode(self.ek).decode()

    @property
    def srk_b64(self) -> str:
        return base64.b64encode(self.srk).decode()

    def registration_id(self) -> str:
        digest = hashlib.sha256(self.ek).digest()
        return base64.b32encode(digest).decode().rstrip("=").lower()

    def activate(self, blob: bytes) -> bytes:
        """Open the blob as the TPM does; the HMAC key it carried becomes this device's."""
        credential, secret, duplicate, seed, public, uri = _fields(blob, 6)
        assert uri == b""
        srk_name = b"\x00\x0b" + hashlib.sha256(self.srk[2:]).digest()
        inner_key = self._activate_credential(credential, secret, srk_name)
        self.key = self._import(duplicate, seed, public, inner_key)
        return self.key

    def _activate_credential(self, credential: bytes, secret: bytes, srk_name: bytes) -> bytes:
        seed = self.ek_key.decrypt(secret, _oaep(b"IDENTITY\0"))
        (size,) = struct.unpack(">H", credential[:2])
        integrity, identity = credential[2 : 2 + size], credential[2 + size :]
        expected = hmac.new(
            _kdf(seed, b"INTEGRITY", b"", 256), identity + srk_name, hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, integrity):
            raise BlobRefused("credential integrity")
        return _fields(_cfb_decrypt(_kdf(seed, b"STORAGE", srk_name, 128), identity), 1)[0]

    def _import(self, duplicate: bytes, seed: bytes, public: bytes, inner_key: bytes) -> bytes:
        name = b"\x00\x0b" + hashlib.sha256(public).digest()
        outer_seed = self.srk_key.decrypt(seed, _oaep(b"DUPLICATE\0"))
        (size,) = struct.unpack(">H", duplicate[:2])
        outer_hmac, wrapped = duplicate[2 : 2 + size], duplicate[2 + size :]
        expected = hmac.new(
            _kdf(outer_seed, b"INTEGRITY", b"", 256), wrapped + name, hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, outer_hmac):
            raise BlobRefused("outer integrity")
        inner = _cfb_decrypt(
            inner_key, _cfb_decrypt(_kdf(outer_seed, b"STORAGE", name, 128), wrapped)
        )
        inner_integrity, sensitive = _fields(inner, 2)
        if hashlib.sha256(tpm2b(sensitive) + name).digest() != inner_integrity:
            raise BlobRefused("inner integrity")
        (kind,) = struct.unpack(">H", sensitive[:2])
        auth, obfuscation, key = _fields(sensitive[2:], 3)
        assert (kind, auth) == (0x0008, b"")
        kind, name_alg, attributes = struct.unpack(">HHI", public[:8])
        assert (kind, name_alg, attributes & 0x12) == (0x0008, 0x000B, 0)  # importable
        if public[-32:] != hashlib.sha256(obfuscation + key).digest():
            raise BlobRefused("public and sensitive areas are not bound")
        return key

    def token(self, id_scope: str, registration_id: str, expiry: int | None = None) -> str:
        """The SAS token a device signs with its TPM key (Node's encoding)."""
        assert self.key is not None, "activate a blob first"
        resource = quote(f"{id_scope}/registrations/{registration_id}", safe="")
        expiry = expiry if expiry is not None else int(time.time()) + 3600
        digest = hmac.new(self.key, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
        signature = quote(base64.b64encode(digest).decode(), safe="")
        return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn=registration"
