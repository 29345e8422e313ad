"""How a device proves who it is with a symmetric key: a SAS token for
``{idScope}/registrations/{registrationId}`` signed with its own key, or with the key its
enrollment group derives for it."""

from __future__ import annotations

import base64
import hmac
from urllib.parse import unquote

from dpsd.domain.errors import InvalidToken
from dpsd.domain.sas import SasToken, parse_token, signed_by

DEVICE_KEY_NAME = "registration"


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The key a device of a symmetric-key group signs with: HMAC-SHA256 of its registration
    id under the group key, base64 (as ``az iot dps compute-device-key``)."""
    digest = hmac.digest(base64.b64decode(group_key), registration_id.encode(), "sha256")
    return base64.b64encode(digest).decode()


def device_audience(id_scope: str, registration_id: str) -> str:
    return f"{id_scope}/registrations/{registration_id}"


def parse_device_token(header: str, id_scope: str, registration_id: str, *, now: int) -> SasToken:
    """A device token that names this device and has not expired; signature not yet checked.

    ``sr`` is compared decoded and case-insensitively: Python and C# encode it, C encodes
    with lower-case escapes, Node sends it raw. ``skn`` is absent (Python) or
    ``registration`` (the others).
    """
    token = parse_token(header)
    if unquote(token.resource).lower() != device_audience(id_scope, registration_id).lower():
        raise InvalidToken("the token's audience (sr) is not this device's registration")
    if token.key_name not in (None, DEVICE_KEY_NAME):
        raise InvalidToken(f"a device token's skn is {DEVICE_KEY_NAME!r} or absent")
    if token.expiry <= now:
        raise InvalidToken("the SharedAccessSignature token has expired")
    return token


def signed_with_any(token: SasToken, keys: list[str]) -> bool:
    """Whether one of the base64 ``keys`` signed the token (each compared in constant time)."""
    return any(signed_by(token, base64.b64decode(key)) for key in keys)
