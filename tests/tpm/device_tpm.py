"""A DPS device's TPM operations on a software TPM, as the Azure device SDKs run them.

Run by the system's python3 (tpm2-pytss is a Debian package built for it), not by the test
suite's interpreter: ``python3 device_tpm.py HOST PORT`` talks to swtpm's command port and
answers one JSON request a line on stdin with one JSON answer a line on stdout:

- ``{"op": "keys"}``: create the EK and SRK from the SDKs' templates; their TPM2B_PUBLIC in
  base64 (``ek``, ``srk``);
- ``{"op": "activate", "blob": b64}``: PolicySecret(endorsement), ActivateCredential
  (SRK, EK), Import under the SRK with the released key, Load: the key DPS sent becomes the
  device's signing key (``{"ok": true}``);
- ``{"op": "sign", "data": text}``: HMAC-SHA-256 of the text with that key, in the TPM
  (``signature``, base64).

A TPM error is ``{"error": "..."}``; the process goes on.
"""

from __future__ import annotations

import base64
import json
import struct
import sys

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TCTILdr,
)

EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
STORAGE = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
STORAGE |= TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN


def template(attributes: TPMA_OBJECT, policy: bytes) -> TPM2B_PUBLIC:
    """RSA-2048, SHA-256, AES-128-CFB, exponent 0, empty unique: the SDKs' EK and SRK."""
    area = TPMT_PUBLIC()
    area.type = TPM2_ALG.RSA
    area.nameAlg = TPM2_ALG.SHA256
    area.objectAttributes = attributes
    area.authPolicy = TPM2B_DIGEST(policy)
    details = area.parameters.rsaDetail
    details.symmetric.algorithm = TPM2_ALG.AES
    details.symmetric.keyBits.aes = 128
    details.symmetric.mode.aes = TPM2_ALG.CFB
    details.scheme.scheme = TPM2_ALG.NULL
    details.keyBits = 2048
    details.exponent = 0
    return TPM2B_PUBLIC(publicArea=area)


def split_blob(blob: bytes) -> list[bytes]:
    """The six TPM2B fields of an activation blob, each with its size."""
    fields, offset = [], 0
    for _ in range(6):
        (size,) = struct.unpack(">H", blob[offset : offset + 2])
        fields.append(blob[offset : offset + 2 + size])
        offset += 2 + size
    if offset != len(blob):
        raise ValueError(f"{len(blob) - offset} bytes after the blob's six fields")
    return fields


class DeviceTpm:
    def __init__(self, esys: ESAPI) -> None:
        self.esys = esys
        self.ek = self.srk = self.key = None
        self.ek_public = self.srk_public = None

    def flush(self) -> None:
        """Free the TPM's object slots (swtpm has a few, and no resource manager)."""
        for handle in (self.ek, self.srk, self.key):
            if handle is not None:
                self.esys.flush_context(handle)
        self.ek = self.srk = self.key = None

    def keys(self) -> dict[str, str]:
        self.flush()
        ek_template = template(STORAGE | TPMA_OBJECT.ADMINWITHPOLICY, EK_POLICY)
        srk_attributes = STORAGE | TPMA_OBJECT.NODA | TPMA_OBJECT.USERWITHAUTH
        self.ek, self.ek_public, *_ = self.esys.create_primary(
            TPM2B_SENSITIVE_CREATE(), ek_template, ESYS_TR.ENDORSEMENT
        )
        self.srk, self.srk_public, *_ = self.esys.create_primary(
            TPM2B_SENSITIVE_CREATE(), template(srk_attributes, b""), ESYS_TR.OWNER
        )
        return {
            "ek": base64.b64encode(self.ek_public.marshal()).decode(),
            "srk": base64.b64encode(self.srk_public.marshal()).decode(),
        }

    def activate(self, blob: bytes) -> dict[str, bool]:
        credential, secret, duplicate, seed, public, _ = split_blob(blob)
        session = self.esys.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            self.esys.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            inner_key = self.esys.activate_credential(
                self.srk,
                self.ek,
                TPM2B_ID_OBJECT.unmarshal(credential)[0],
                TPM2B_ENCRYPTED_SECRET.unmarshal(secret)[0],
                session2=session,
            )
        finally:
            self.esys.flush_context(session)
        symmetric = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
        symmetric.keyBits.aes = 128
        symmetric.mode.aes = TPM2_ALG.CFB
        key_public = TPM2B_PUBLIC.unmarshal(public)[0]
        private = self.esys.import_(
            self.srk,
            bytes(inner_key),
            key_public,
            TPM2B_PRIVATE.unmarshal(duplicate)[0],
            TPM2B_ENCRYPTED_SECRET.unmarshal(seed)[0],
            symmetric,
        )
        if self.key is not None:  # replaced, as the SDKs evict the key at 0x81000100
            self.esys.flush_context(self.key)
            self.key = None
        self.key = self.esys.load(self.srk, private, key_public)
        return {"ok": True}

    def sign(self, data: str) -> dict[str, str]:
        digest = self.esys.hmac(self.key, data.encode(), TPM2_ALG.SHA256)
        return {"signature": base64.b64encode(bytes(digest)).decode()}


def main() -> None:
    host, port = sys.argv[1], sys.argv[2]
    with TCTILdr("swtpm", f"host={host},port={port}") as tcti, ESAPI(tcti) as esys:
        tpm = DeviceTpm(esys)
        try:
            serve(tpm)
        finally:
            tpm.flush()


def serve(tpm: DeviceTpm) -> None:
    """Answer each request line until stdin closes."""
    for line in sys.stdin:
        request = json.loads(line)
        try:
            match request["op"]:
                case "keys":
                    answer: dict[str, object] = dict(tpm.keys())
                case "activate":
                    answer = dict(tpm.activate(base64.b64decode(request["blob"])))
                case "sign":
                    answer = dict(tpm.sign(request["data"]))
                case other:
                    answer = {"error": f"unknown op {other!r}"}
        except Exception as error:  # noqa: BLE001 - the test reads the TPM's refusal
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
