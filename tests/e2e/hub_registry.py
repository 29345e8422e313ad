"""The official Python hub client (azure-iot-hub's IoTHubRegistryManager, unchanged) on the
hubs a running dpsd serves itself (``dpsd hub add --builtin``), for end-to-end modules that
check where provisioned devices landed.

The hubs' names (``*.dpsd.test``) resolve to dpsd's address for the test process only: the
resolver is the one thing faked, as a user would put the names in DNS or /etc/hosts.
requests (under azure-iot-hub) trusts the dpsd CA through REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.iot.hub import IoTHubRegistryManager

from tests.certs import Issued
from tests.e2e.process import (
    DpsdProcess,
    bind_problem,
    run_dpsd,
    skip_or_fail,
    start_dpsd_listening,
)

HUB_DOMAIN = ".dpsd.test"


@contextmanager
def serving_builtin_hubs(
    base: Path, address: str, ports: Sequence[tuple[str, int]], hubs: Sequence[str]
) -> Iterator[DpsdProcess]:
    """``dpsd serve`` on ``address`` with each listener of ``ports`` (``("https", 443)``; -1
    turns one off) and the built-in ``hubs`` linked, stopped cleanly after. Skips (or fails
    under CI) when a port cannot be bound there."""
    for _, port in ports:
        problem = bind_problem(address, port) if port > 0 else None
        if problem:
            skip_or_fail(problem)
    listen = [*("--host", address, "--hostname", address), *("--retry-after", "1")]
    for listener, port in ports:
        listen += [f"--{listener}-port", str(port)]
    started = start_dpsd_listening(base / "data", base / "serve.log", serve_args=listen)
    for hub in hubs:
        added = run_dpsd("hub", "add", hub, "--builtin", "--data-dir", str(base / "data"))
        assert added.returncode == 0, added.stderr
    yield started
    started.stop_cleanly()


@contextmanager
def hub_names_resolving_to(address: str) -> Iterator[None]:
    """``*.dpsd.test`` resolves to ``address`` in this process while the context lasts."""
    original = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(HUB_DOMAIN):
            host = address
        return original(host, *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        yield
    finally:
        socket.getaddrinfo = original


@contextmanager
def hub_registries(
    server: DpsdProcess, hubs: Sequence[str]
) -> Iterator[dict[str, IoTHubRegistryManager]]:
    """The official hub client of each built-in hub, from ``dpsd hub connection-string``."""
    patch = pytest.MonkeyPatch()
    patch.setenv("REQUESTS_CA_BUNDLE", server.info["caCertificatePath"])
    try:
        yield {hub: registry_manager(server, hub) for hub in hubs}
    finally:
        patch.undo()


def registry_manager(server: DpsdProcess, hub: str) -> IoTHubRegistryManager:
    printed = run_dpsd("hub", "connection-string", hub, "--data-dir", str(server.data_dir))
    assert printed.returncode == 0, printed.stderr
    connection_string = printed.stdout.strip()
    assert connection_string.startswith(f"HostName={hub};SharedAccessKeyName=iothubowner;")
    return IoTHubRegistryManager.from_connection_string(connection_string)


def thumbprint(device: Issued) -> str:
    return hashlib.sha256(device.der).hexdigest().upper()


def assert_sas_device(
    registry: IoTHubRegistryManager, device_id: str, key: str, secondary_key: str | None = None
) -> None:
    """The hub holds an enabled device authenticated by ``key`` and ``secondary_key`` (by
    default the same)."""
    device = registry.get_device(device_id)
    assert device.device_id == device_id
    assert device.status == "enabled"
    assert device.authentication.type == "sas"
    assert device.authentication.symmetric_key.primary_key == key
    assert device.authentication.symmetric_key.secondary_key == (secondary_key or key)


def assert_x509_device(registry: IoTHubRegistryManager, device_id: str, device: Issued) -> None:
    """The hub holds a device self-signed by the certificate it provisioned with."""
    found = registry.get_device(device_id)
    assert found.authentication.type == "selfSigned"
    assert found.authentication.x509_thumbprint.primary_thumbprint == thumbprint(device)
    assert found.authentication.x509_thumbprint.secondary_thumbprint == thumbprint(device)


def assert_initial_twin(
    registry: IoTHubRegistryManager, device_id: str, initial_twin: Mapping[str, Any]
) -> None:
    """The device's twin carries the enrollment's initial tags and desired properties."""
    twin = registry.get_twin(device_id)
    assert twin.tags == initial_twin["tags"]
    for name, value in initial_twin["properties"]["desired"].items():
        assert twin.properties.desired[name] == value
