"""The activation blob: an HMAC key that only one device's TPM can take in.

DPS hands a TPM device its key (the challenge key, then the key of its hub identity) as the
inputs of two TPM commands, concatenated:

1. ``ActivateCredential`` (credentialBlob, secret): MakeCredential to the EK, bound to the
   SRK's Name, releasing a 16-byte inner wrapping key;
2. ``Import`` (duplicate, inSymSeed, objectPublic): the HMAC key as a keyed-hash object
   duplicated under the SRK, inner-wrapped with that key and outer-wrapped with a seed
   encrypted to the SRK;
3. an empty ``TPM2B_DATA`` that every SDK reads and ignores.

The arithmetic is TPM 2.0 Part 1 (KDFa, the duplication and credential protections): RSA-OAEP
with SHA-256 and the label the TPM expects, AES-128-CFB from a zero IV, HMAC-SHA-256. The
random values come from the ``random`` parameter (``secrets.token_bytes`` by default).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from dpsd.domain.tpm_public import ALG_SHA256, TpmPublicKey

try:  # cryptography 47+: CFB lives with the other legacy modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

Random = Callable[[int], bytes]

HMAC_KEY_BYTES = 32
INNER_KEY_BYTES = 16
"""The C and C# SDKs import with AES-128 whatever the blob says: the inner key is 16 bytes."""
_SEED_BYTES = 32
_ALG_KEYEDHASH = 0x0008
_ALG_HMAC = 0x0005
_HMAC_KEY_ATTRIBUTES = 0x0004_0440
"""sign | noDA | userWithAuth: an importable (not fixedTPM/fixedParent) signing key."""


def sized(data: bytes) -> bytes:
    """A TPM2B: two bytes of length, big-endian, then the bytes."""
    return struct.pack(">H", len(data)) + data


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """The TPM's KDFa with HMAC-SHA-256 (SP 800-108 counter mode)."""
    output = b""
    counter = 0
    while len(output) * 8 < bits:
        counter += 1
        message = (
            struct.pack(">I", counter) + label + b"\x00" + context_u + context_v
        ) + struct.pack(">I", bits)
        output += hmac.new(key, message, hashlib.sha256).digest()
    return output[: bits // 8]


def _aes_cfb(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), CFB(bytes(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _encrypt_seed(key: TpmPublicKey, seed: bytes, label: bytes) -> bytes:
    numbers = rsa.RSAPublicNumbers(key.exponent, int.from_bytes(key.modulus, "big"))
    oaep = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label
    )
    return numbers.public_key().encrypt(seed, oaep)


def _hmac_key_public(obfuscation: bytes, key: bytes) -> bytes:
    """TPMT_PUBLIC of a keyed-hash HMAC-SHA-256 key; its unique is H(seed ‖ key), which the
    TPM checks when it loads the key."""
    return (
        struct.pack(">HHI", _ALG_KEYEDHASH, ALG_SHA256, _HMAC_KEY_ATTRIBUTES)
        + sized(b"")
        + struct.pack(">HH", _ALG_HMAC, ALG_SHA256)
        + sized(hashlib.sha256(obfuscation + key).digest())
    )


def _name(area: bytes) -> bytes:
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(area).digest()


def _duplicate(
    srk: TpmPublicKey, sensitive: bytes, object_name: bytes, inner_key: bytes, random: Random
) -> tuple[bytes, bytes]:
    """The key's sensitive area wrapped inside (``inner_key``) and outside (a seed for the
    SRK): TPM2B_PRIVATE and the TPM2B_ENCRYPTED_SECRET of the seed."""
    inner_integrity = hashlib.sha256(sized(sensitive) + object_name).digest()
    inner = _aes_cfb(inner_key, sized(inner_integrity) + sized(sensitive))
    seed = random(_SEED_BYTES)
    encrypted_seed = _encrypt_seed(srk, seed, b"DUPLICATE\x00")
    storage_key = kdfa(seed, b"STORAGE", object_name, b"", srk.symmetric_bits)
    wrapped = _aes_cfb(storage_key, inner)
    integrity_key = kdfa(seed, b"INTEGRITY", b"", b"", 256)
    outer_hmac = _hmac(integrity_key, wrapped + object_name)
    return sized(sized(outer_hmac) + wrapped), sized(encrypted_seed)


def _credential(
    ek: TpmPublicKey, srk: TpmPublicKey, secret: bytes, random: Random
) -> tuple[bytes, bytes]:
    """MakeCredential: ``secret`` for the TPM holding ``ek``, released only to ``srk``
    (ActivateCredential's activateHandle): TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET."""
    seed = random(_SEED_BYTES)
    encrypted_seed = _encrypt_seed(ek, seed, b"IDENTITY\x00")
    storage_key = kdfa(seed, b"STORAGE", srk.name, b"", ek.symmetric_bits)
    identity = _aes_cfb(storage_key, sized(secret))
    integrity_key = kdfa(seed, b"INTEGRITY", b"", b"", 256)
    integrity = _hmac(integrity_key, identity + srk.name)
    return sized(sized(integrity) + identity), sized(encrypted_seed)


def activation_blob(
    ek: TpmPublicKey, srk: TpmPublicKey, key: bytes, random: Random = secrets.token_bytes
) -> bytes:
    """The blob that gives ``key`` (an HMAC-SHA-256 key) to the TPM holding ``ek``, imported
    under ``srk``; 766 bytes for the SDKs' keys and a 32-byte ``key``."""
    obfuscation = random(HMAC_KEY_BYTES)
    public = _hmac_key_public(obfuscation, key)
    sensitive = struct.pack(">H", _ALG_KEYEDHASH) + sized(b"") + sized(obfuscation) + sized(key)
    inner_key = random(INNER_KEY_BYTES)
    duplicate, encrypted_seed = _duplicate(srk, sensitive, _name(public), inner_key, random)
    credential, encrypted_secret = _credential(ek, srk, inner_key, random)
    return credential + encrypted_secret + duplicate + encrypted_seed + sized(public) + sized(b"")
