"""What dpsd keeps about TPM devices between requests: the key of the latest challenge
(the signed request and every poll are verified with it) and the key of the device's hub
identity (given again when the same TPM registers again)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

CHALLENGE_KEY_BYTES = 32
HUB_KEY_BYTES = 32
UNANSWERED_CHALLENGE_LIFETIME = timedelta(minutes=5)
"""How long a challenge waits for the signed request that answers it."""
MAX_KEY_HOLD = timedelta(hours=25)
"""How long after a signed request its key is kept at most, whatever the token's expiry
(C# signs for a day, C for 40 minutes, Node for an hour)."""


@dataclass(frozen=True, slots=True)
class TpmChallenge:
    """The latest challenge of a registration. ``etag`` names this challenge (a new one
    replaces it); ``endorsement_key`` and ``storage_root_key``: the device's base64
    TPM2B_PUBLIC as it sent them; ``key``: the base64 HMAC key the blob carried;
    ``expires``: when the key stops being accepted."""

    registration_id: str
    etag: str
    endorsement_key: str
    storage_root_key: str
    key: str
    expires: datetime

    def held_until(self, token_expiry: datetime, now: datetime) -> datetime:
        """How long to keep the key once a token signed with it expiring at
        ``token_expiry`` was verified at ``now``."""
        return min(token_expiry, now + MAX_KEY_HOLD)


@dataclass(frozen=True, slots=True)
class TpmHubKey:
    """The symmetric keys of a TPM device's hub identity (base64; the device is given the
    primary), and the fingerprint of the EK they were given to: another TPM under the same
    registration id gets new keys."""

    registration_id: str
    etag: str
    endorsement_key: str
    key: str
    secondary_key: str
