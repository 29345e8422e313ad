"""Where a client on this machine reaches the HTTPS listener (``Runtime.https_address``)."""

from __future__ import annotations

import socket

import pytest

from dpsd.server import bind, client_address


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "reached_at"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),  # the wildcard
        ("localhost", None),
        pytest.param("::", "[::1]", marks=pytest.mark.skipif(not has_ipv6(), reason="no IPv6")),
        pytest.param("::1", "[::1]", marks=pytest.mark.skipif(not has_ipv6(), reason="no IPv6")),
    ],
)
def test_client_address(host: str, reached_at: str | None) -> None:
    listener = bind(host, 0)
    with listener:
        port = listener.getsockname()[1]
        address = client_address(listener)
    if reached_at is None:  # localhost: whichever family getaddrinfo gave first
        assert address in {f"127.0.0.1:{port}", f"[::1]:{port}"}
    else:
        assert address == f"{reached_at}:{port}"
