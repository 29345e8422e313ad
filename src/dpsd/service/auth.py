"""SharedAccessSignature authentication against shared access policies: the service API's,
and those of the IoT hubs dpsd serves itself (any policy with a name and two keys)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Generic, Protocol, TypeVar

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


class SigningPolicy(Protocol):
    """A shared access policy: a name and the two keys that may sign its tokens."""

    @property
    def name(self) -> str: ...

    def signing_keys(self) -> tuple[bytes, bytes]: ...


P = TypeVar("P", bound=SigningPolicy)
F = TypeVar("F", bound=enum.Flag)


def authenticate(
    header: str | None,
    policies: Mapping[str, P] | Callable[[str], P | None],
    *,
    now: int,
    host: str | Set[str],
) -> P:
    """The policy whose key signed the token in ``header``, or Unauthorized.

    ``policies``: by name, or a function finding one by name. The signature is checked
    over the token's ``sr`` exactly as sent; the audience, once decoded, must name ``host``
    (scheme, port and path aside), or one of the lower-case names in a set of them.
    """
    if not header:
        raise Unauthorized("The request needs an Authorization header with a SharedAccessSignature")
    try:
        token = parse_token(header)
    except InvalidToken as error:
        raise Unauthorized(error.message) from error
    find = policies.get if isinstance(policies, Mapping) else policies
    policy = find(token.key_name or "")
    if policy is None:
        raise Unauthorized("The token names no shared access policy this service knows (skn)")
    if not any(signed_by(token, key) for key in policy.signing_keys()):
        raise Unauthorized("The token's signature does not match the policy's keys")
    if token.expiry <= now:
        raise Unauthorized("The SharedAccessSignature token has expired")
    hosts = {host.lower()} if isinstance(host, str) else host
    if audience_host(token.audience) not in hosts:
        raise Unauthorized("The token's audience (sr) does not name this service's host")
    return policy


def require(policy: SharedAccessPolicy, rights: AccessRights) -> None:
    require_rights(policy.name, policy.rights, rights, RIGHT_NAMES)


def require_rights(policy_name: str, granted: F, needed: F, names: Mapping[F, str]) -> None:
    """Unauthorized naming every right in ``needed`` that ``granted`` lacks."""
    lacking = needed & ~granted
    if not lacking:
        return
    missing = [name for right, name in names.items() if right in lacking]
    if missing:
        raise Unauthorized(
            f"The shared access policy {policy_name!r} lacks the {' and '.join(missing)} right"
        )


class ServiceAuthenticator(Generic[P]):
    """authenticate() against fixed policies, with a memory of tokens already verified:
    the service API's, and each built-in IoT hub's (built anew when its policies change).

    Clients send the same token for many requests (the SDKs sign one per request at most,
    with one-second expiries; dpsd's hub client one per five minutes), and verifying it
    costs more than serving a read. Only tokens that verified are remembered, each until
    it expires.

    A token's audience must be one of ``own_names`` (lower case): the names this service
    answers to, whatever the request's own Host header says.
    """

    def __init__(
        self,
        policies: Mapping[str, P] | Callable[[str], P | None],
        own_names: Iterable[str],
        capacity: int = 4096,
    ) -> None:
        self._policies = policies
        self._own_names = frozenset(own_names)
        self._capacity = capacity
        self._verified: dict[str, tuple[P, int]] = {}

    def authenticate(self, header: str | None, *, now: int) -> P:
        remembered = self._verified.get(header or "")
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        policy = authenticate(header, self._policies, now=now, host=self._own_names)
        if len(self._verified) >= self._capacity:
            self._verified.clear()
        assert header is not None
        self._verified[header] = (policy, parse_token(header).expiry)
        return policy
