"""Service API authentication: SharedAccessSignature tokens signed with a policy key."""

from __future__ import annotations

from collections.abc import Mapping

from dpsd.domain.errors import InvalidToken
from dpsd.domain.sas import (
    RIGHT_NAMES,
    AccessRights,
    SharedAccessPolicy,
    audience_host,
    parse_token,
    signed_by,
)
from dpsd.service.errors import Unauthorized


def authenticate(
    header: str | None,
    policies: Mapping[str, SharedAccessPolicy],
    *,
    now: int,
    host: str,
) -> SharedAccessPolicy:
    """The policy whose key signed the token in ``header``, or Unauthorized.

    The signature is checked over the token's ``sr`` exactly as sent; the audience, once
    decoded, must name the host the request was sent to (scheme, port and path aside).
    """
    if not header:
        raise Unauthorized("The request needs an Authorization header with a SharedAccessSignature")
    try:
        token = parse_token(header)
    except InvalidToken as error:
        raise Unauthorized(error.message) from error
    policy = policies.get(token.key_name or "")
    if policy is None:
        raise Unauthorized("The token names no shared access policy this service knows (skn)")
    if not any(signed_by(token, key) for key in policy.signing_keys()):
        raise Unauthorized("The token's signature does not match the policy's keys")
    if token.expiry <= now:
        raise Unauthorized("The SharedAccessSignature token has expired")
    if audience_host(token.audience) != host.lower():
        raise Unauthorized("The token's audience (sr) does not name this service's host")
    return policy


def require(policy: SharedAccessPolicy, rights: AccessRights) -> None:
    missing = [name for right, name in RIGHT_NAMES.items() if right in rights & ~policy.rights]
    if missing:
        raise Unauthorized(
            f"The shared access policy {policy.name!r} lacks the {' and '.join(missing)} right"
        )


class ServiceAuthenticator:
    """authenticate() with a memory of tokens already verified.

    Clients send the same token for many requests (the SDKs sign one per request at most,
    with one-second expiries), and verifying it costs more than serving a read. Only
    tokens that verified are remembered, each until it expires.
    """

    def __init__(self, policies: Mapping[str, SharedAccessPolicy], capacity: int = 4096) -> None:
        self._policies = policies
        self._capacity = capacity
        self._verified: dict[tuple[str, str], tuple[SharedAccessPolicy, int]] = {}

    def authenticate(self, header: str | None, *, now: int, host: str) -> SharedAccessPolicy:
        key = (header or "", host.lower())
        remembered = self._verified.get(key)
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        policy = authenticate(header, self._policies, now=now, host=host)
        if len(self._verified) >= self._capacity:
            self._verified.clear()
        assert header is not None
        self._verified[key] = (policy, parse_token(header).expiry)
        return policy
