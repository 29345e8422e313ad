"""Entity tags: opaque version stamps on every stored record."""

from __future__ import annotations

import base64

WILDCARD = "*"


def new_etag(random16: bytes) -> str:
    """An etag shaped as the real service's: base64 of a quoted GUID."""
    if len(random16) != 16:
        raise ValueError("an etag takes exactly 16 random bytes")
    h = random16.hex()  # the GUID's text, as uuid.UUID(bytes=random16) writes it
    return base64.b64encode(f'"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"'.encode()).decode(
        "ascii"
    )


def normalize_if_match(header: str) -> str:
    """The etag a client meant, without a weak prefix or one layer of quotes.

    Clients differ: the C# SDK quotes etags, Node and the CLI send them verbatim.
    """
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def is_wildcard(if_match: str) -> bool:
    return normalize_if_match(if_match) == WILDCARD
