"""TPM attestation: how a device proves it holds the TPM its enrollment names.

1. The device sends its EK and SRK without a credential. dpsd checks the EK against the
   enrollment, picks a fresh HMAC key and answers with an activation blob that only that
   TPM can open (HTTPS: a 401 carrying ``authenticationKey``; AMQP: SASL challenges). The
   key is stored as the registration's latest challenge, replacing any earlier one.
2. The device signs a SAS token with the key inside its TPM. Every request it makes with
   that token (the register call, each poll) is verified with the stored key, which is kept
   until the token expires (at most ``MAX_KEY_HOLD`` after the first verified request), or
   for ``UNANSWERED_CHALLENGE_LIFETIME`` while no signed request came.
3. Once assigned, the device is handed the key of its hub identity in another blob for the
   same EK and SRK. The same TPM registering again gets the same hub key back.

The store, not the process, holds the keys: any dpsd process sharing it can verify.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from dpsd.domain.attestation import AttestationType
from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.errors import InvalidAttestation
from dpsd.domain.etag import new_etag
from dpsd.domain.sas import SasToken, signed_by
from dpsd.domain.tpm_activation import activation_blob
from dpsd.domain.tpm_keys import (
    CHALLENGE_KEY_BYTES,
    HUB_KEY_BYTES,
    UNANSWERED_CHALLENGE_LIFETIME,
    TpmChallenge,
    TpmHubKey,
)
from dpsd.domain.tpm_public import (
    EK_FIELD,
    SRK_FIELD,
    TpmKeys,
    TpmPublicKey,
    decode_public_key,
    key_fingerprint,
    parse_public_key,
)
from dpsd.service.errors import DeviceUnauthorized, EnrollmentNotFound
from dpsd.service.ports import (
    Clock,
    EnrollmentRepository,
    Entropy,
    TpmChallengeRepository,
    TpmHubKeyRepository,
)


@dataclass(frozen=True, slots=True)
class TpmProof:
    """A device that signed with the key of its latest challenge: the EK and SRK that
    challenge was made for (later blobs go to the same keys)."""

    endorsement_key: TpmPublicKey
    storage_root_key: TpmPublicKey


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_enrolled(enrollment: IndividualEnrollment, endorsement_key: TpmPublicKey) -> None:
    """The device's EK is the one its enrollment names (the same RSA key; an enrolled EK
    that dpsd cannot parse must then match byte for byte)."""
    attestation = enrollment.settings.attestation
    if attestation.type != AttestationType.TPM or attestation.tpm is None:
        raise DeviceUnauthorized(
            f"The enrollment of {enrollment.registration_id!r} does not attest with a TPM"
        )
    enrolled = attestation.tpm.endorsement_key
    try:
        same = decode_public_key(enrolled, field=EK_FIELD).same_key(endorsement_key)
    except InvalidAttestation:
        same = base64.b64decode(enrolled) == endorsement_key.marshaled
    if not same:
        raise DeviceUnauthorized(
            "The endorsement key is not the one this device's enrollment names"
        )


@dataclass(slots=True)
class TpmAttestor:
    enrollments: EnrollmentRepository
    challenges: TpmChallengeRepository
    hub_keys: TpmHubKeyRepository
    clock: Clock
    entropy: Entropy

    async def challenge(self, registration_id: str, keys: TpmKeys) -> bytes:
        """A new challenge for the enrolled device: the activation blob to send it. Nothing
        is stored unless the EK is the enrollment's."""
        endorsement_key, storage_root_key = keys.endorsement(), keys.storage_root()
        enrollment = await self.enrollments.get(registration_id)
        if enrollment is None:
            raise EnrollmentNotFound(registration_id)
        check_enrolled(enrollment, endorsement_key)
        key = self.entropy.random_bytes(CHALLENGE_KEY_BYTES)
        blob = activation_blob(endorsement_key, storage_root_key, key, self.entropy.random_bytes)
        await self.challenges.put(
            TpmChallenge(
                registration_id=enrollment.registration_id,
                etag=new_etag(self.entropy.random_bytes(16)),
                endorsement_key=_b64(endorsement_key.marshaled),
                storage_root_key=_b64(storage_root_key.marshaled),
                key=_b64(key),
                expires=self.clock.now() + UNANSWERED_CHALLENGE_LIFETIME,
            )
        )
        return blob

    async def verify(self, enrollment: IndividualEnrollment, token: SasToken) -> TpmProof:
        """The token (audience and expiry checked already) is signed with the key of the
        device's latest challenge, which was made for the EK its enrollment names now."""
        now = self.clock.now()
        challenge = await self.challenges.get(enrollment.registration_id)
        if challenge is None or challenge.expires <= now:
            raise DeviceUnauthorized(
                "No TPM challenge of this device is pending: send the registration without "
                "Authorization, with the device's tpm keys, for a new one"
            )
        proof = TpmProof(
            parse_public_key(base64.b64decode(challenge.endorsement_key), field=EK_FIELD),
            parse_public_key(base64.b64decode(challenge.storage_root_key), field=SRK_FIELD),
        )
        check_enrolled(enrollment, proof.endorsement_key)
        if not signed_by(token, base64.b64decode(challenge.key)):
            raise DeviceUnauthorized(
                "The token is not signed with the key of this device's latest TPM challenge"
            )
        held = challenge.held_until(datetime.fromtimestamp(token.expiry, UTC), now)
        if held != challenge.expires:
            # A new challenge meanwhile wins: then nothing is written.
            await self.challenges.replace(
                replace(challenge, expires=held), expected_etag=challenge.etag
            )
        return proof

    async def hub_key(self, registration_id: str, proof: TpmProof) -> tuple[str, str]:
        """The primary and secondary key of the device's hub identity: those given to this
        TPM before, else new ones."""
        fingerprint = key_fingerprint(proof.endorsement_key)
        stored = await self.hub_keys.get(registration_id)
        if stored is not None and stored.endorsement_key == fingerprint:
            return stored.key, stored.secondary_key
        fresh = TpmHubKey(
            registration_id=registration_id,
            etag=new_etag(self.entropy.random_bytes(16)),
            endorsement_key=fingerprint,
            key=_b64(self.entropy.random_bytes(HUB_KEY_BYTES)),
            secondary_key=_b64(self.entropy.random_bytes(HUB_KEY_BYTES)),
        )
        await self.hub_keys.put(fresh)
        return fresh.key, fresh.secondary_key

    def activation(self, proof: TpmProof, key: str) -> str:
        """A blob giving ``key`` (base64) to the device's TPM, base64."""
        blob = activation_blob(
            proof.endorsement_key,
            proof.storage_root_key,
            base64.b64decode(key),
            self.entropy.random_bytes,
        )
        return _b64(blob)

    async def forget_expired(self) -> None:
        await self.challenges.delete_expired(self.clock.now())
