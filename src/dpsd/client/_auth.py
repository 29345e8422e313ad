"""Connection strings and SharedAccessSignature tokens.

The signing is duplicated from the server on purpose, so that the client depends on httpx and
the standard library only; tests check the two against each other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Generator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httpx

TOKEN_TTL = 3600
"""Seconds a token stays valid; each request is signed afresh."""
CONNECTION_STRING_FORM = "HostName=HOST[:PORT];SharedAccessKeyName=POLICY;SharedAccessKey=KEY"


@dataclass(frozen=True, slots=True)
class ConnectionString:
    """``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``, parsed.

    ``endpoint`` is the base URL requests go to (https unless HostName says ``http://``);
    ``host`` is the bare lower-case host name that tokens name as their audience.
    """

    endpoint: str
    host: str
    key_name: str
    key: str

    @classmethod
    def parse(cls, text: str) -> ConnectionString:
        """Raises ValueError saying which part is wrong and what a connection string is."""
        try:
            return cls._parse(text)
        except ValueError as error:
            raise ValueError(f"{error}; a connection string is {CONNECTION_STRING_FORM}") from None

    @classmethod
    def _parse(cls, text: str) -> ConnectionString:
        fields: dict[str, str] = {}
        for part in text.strip().strip(";").split(";"):
            name, separator, value = part.strip().partition("=")
            if not separator or not name.strip():
                raise ValueError(f"the connection string's part {part.strip()!r} is not NAME=VALUE")
            if not value.strip():
                raise ValueError(f"the connection string's {name.strip()} has no value")
            fields[name.strip().lower()] = value.strip()
        missing = [
            name
            for name in ("HostName", "SharedAccessKeyName", "SharedAccessKey")
            if name.lower() not in fields
        ]
        if missing:
            raise ValueError(f"the connection string lacks {' and '.join(missing)}")
        endpoint = endpoint_url(fields["hostname"])
        try:
            base64.b64decode(fields["sharedaccesskey"], validate=True)
        except ValueError as error:  # binascii.Error
            raise ValueError("the connection string's SharedAccessKey is not base64") from error
        return cls(
            endpoint=endpoint,
            host=audience_host(endpoint),
            key_name=fields["sharedaccesskeyname"],
            key=fields["sharedaccesskey"],
        )


def endpoint_url(host_name: str) -> str:
    """The base URL of a HostName: ``host[:port]`` means https, a scheme is kept."""
    url = host_name if "://" in host_name else f"https://{host_name}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"HostName {host_name!r} is not a host name or an http(s) URL")
    return f"{parts.scheme}://{parts.netloc}"


def audience_host(endpoint: str) -> str:
    """The host name of an endpoint URL, without scheme or port, in lower case."""
    return (urlsplit(endpoint).hostname or "").lower()


def sas_token(host: str, key_name: str, key: str, *, now: float | None = None) -> str:
    """A token for ``host`` valid for TOKEN_TTL seconds, written as the Azure SDKs write it:
    ``sr`` URL-encoded, the HMAC-SHA256 of ``sr`` as sent, a newline and the expiry."""
    resource = quote(host, safe="")
    expiry = int(time.time() if now is None else now) + TOKEN_TTL
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
    signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn={key_name}"


class SasAuth(httpx.Auth):
    """Signs every request with a fresh token (sync and async alike)."""

    def __init__(self, host: str, key_name: str, key: str) -> None:
        self._host = host
        self._key_name = key_name
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = sas_token(self._host, self._key_name, self._key)
        yield request
