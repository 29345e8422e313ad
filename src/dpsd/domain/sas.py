"""SharedAccessSignature tokens and the shared access policies that sign them."""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from dpsd.domain.errors import InvalidToken

SCHEME = "SharedAccessSignature"
_FIELDS = frozenset({"sr", "sig", "se", "skn"})


class AccessRights(enum.Flag):
    SERVICE_CONFIG = enum.auto()
    ENROLLMENT_READ = enum.auto()
    ENROLLMENT_WRITE = enum.auto()
    REGISTRATION_STATUS_READ = enum.auto()
    REGISTRATION_STATUS_WRITE = enum.auto()
    DEVICE_CONNECT = enum.auto()


RIGHT_NAMES: dict[AccessRights, str] = {
    AccessRights.SERVICE_CONFIG: "ServiceConfig",
    AccessRights.ENROLLMENT_READ: "EnrollmentRead",
    AccessRights.ENROLLMENT_WRITE: "EnrollmentWrite",
    AccessRights.REGISTRATION_STATUS_READ: "RegistrationStatusRead",
    AccessRights.REGISTRATION_STATUS_WRITE: "RegistrationStatusWrite",
    AccessRights.DEVICE_CONNECT: "DeviceConnect",
}
ALL_RIGHTS = AccessRights(sum(right.value for right in RIGHT_NAMES))


def format_rights(rights: AccessRights) -> str:
    """Rights as the ARM API writes them: ``EnrollmentRead, EnrollmentWrite``."""
    return ", ".join(name for right, name in RIGHT_NAMES.items() if right in rights)


def parse_rights(text: str) -> AccessRights:
    by_name = {name.lower(): right for right, name in RIGHT_NAMES.items()}
    rights = AccessRights(0)
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in by_name:
            raise ValueError(f"unknown access right {part.strip()!r}")
        rights |= by_name[name]
    return rights


OWNER_POLICY = "provisioningserviceowner"
"""The policy with every right, which dpsd creates with the others at its first start."""


@dataclass(frozen=True, slots=True)
class SharedAccessPolicy:
    name: str
    primary_key: str
    secondary_key: str
    rights: AccessRights

    def signing_keys(self) -> tuple[bytes, bytes]:
        return base64.b64decode(self.primary_key), base64.b64decode(self.secondary_key)


def service_connection_string(hostname: str, port: int, policy: SharedAccessPolicy) -> str:
    """The service connection string of a policy, for the endpoint at ``hostname:port``
    (the port left out when it is HTTPS's own, 443)."""
    host = hostname if port == 443 else f"{hostname}:{port}"
    return f"HostName={host};SharedAccessKeyName={policy.name};SharedAccessKey={policy.primary_key}"


@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed token. ``resource`` is kept exactly as sent: clients encode it differently
    and each signs the text it sends."""

    resource: str
    signature: bytes
    expiry: int
    key_name: str | None

    @property
    def audience(self) -> str:
        return unquote(self.resource)


def parse_token(header: str) -> SasToken:
    scheme, _, rest = header.strip().partition(" ")
    if scheme != SCHEME or not rest:
        raise InvalidToken(f"the Authorization header is not a {SCHEME} token")
    fields: dict[str, str] = {}
    for part in rest.strip().split("&"):
        name, separator, value = part.partition("=")
        if not separator or name not in _FIELDS or name in fields:
            raise InvalidToken(f"the {SCHEME} token has an unexpected or repeated field")
        fields[name] = value
    missing = [name for name in ("sr", "sig", "se") if not fields.get(name)]
    if missing:
        raise InvalidToken(f"the {SCHEME} token lacks {', '.join(missing)}")
    try:
        signature = base64.b64decode(unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidToken(f"the {SCHEME} token's signature is not base64") from error
    expiry = fields["se"]
    if not (expiry.isascii() and expiry.isdigit()) or len(expiry) > 12:
        raise InvalidToken(f"the {SCHEME} token's expiry is not a number of seconds")
    key_name = fields.get("skn")
    return SasToken(
        resource=fields["sr"],
        signature=signature,
        expiry=int(expiry),
        key_name=unquote(key_name) if key_name else None,
    )


def sign(resource: str, expiry: int, key: bytes) -> bytes:
    message = f"{resource}\n{expiry}".encode()
    return hmac.digest(key, message, "sha256")


def signed_by(token: SasToken, key: bytes) -> bool:
    """Whether ``key`` made the token's signature; compared in constant time."""
    return hmac.compare_digest(sign(token.resource, token.expiry, key), token.signature)


def audience_host(audience: str) -> str:
    """The host an audience names, however the client wrote it (bare host, URL, host:port)."""
    candidate = audience if "://" in audience else f"//{audience}"
    try:
        host = urlsplit(candidate).hostname
    except ValueError:
        return ""
    return (host or "").lower()


def make_token(resource: str, key_name: str | None, key: bytes, expiry: int) -> str:
    """A token as the Azure SDKs write one (resource URL-encoded)."""
    from urllib.parse import quote

    encoded = quote(resource, safe="")
    signature = base64.b64encode(sign(encoded, expiry, key)).decode()
    token = f"{SCHEME} sr={encoded}&sig={quote(signature, safe='')}&se={expiry}"
    return token + (f"&skn={key_name}" if key_name else "")
