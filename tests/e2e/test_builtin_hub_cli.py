"""``dpsd hub`` for built-in hubs: link one, list what dpsd does with each hub's devices,
print a policy's connection string, and serve the hub's certificate to clients that ask
for its name, from a server started before the hub was linked."""

from __future__ import annotations

import json
import re
import socket
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from tests.e2e.cli_runner import error_line, invoke, succeeded
from tests.e2e.process import DpsdProcess, run_dpsd

pytestmark = pytest.mark.e2e

HUB = "hub1.example.net"
AZURE_HUB = "HostName=az.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"
HANDSHAKE_DEADLINE = 10.0


def hub(data_dir: Path, *args: str) -> Any:
    return invoke("hub", *args, "--data-dir", str(data_dir))


def hub_certificate(data_dir: Path, name: str) -> Path:
    return data_dir / "tls" / "hubs" / f"{name}.pem"


def test_builtin_hub_lifecycle(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    added = json.loads(
        succeeded(hub(data_dir, "add", f"{HUB}:8443", "--builtin", "-o", "json")).stdout
    )
    owner = added.pop("connectionString")  # a built-in hub's keys are shown when it is made
    assert re.fullmatch(
        rf"HostName={HUB}:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=\S{{44}}", owner
    )
    assert added == {
        "hostName": f"{HUB}:8443",
        "devices": "built-in",
        "allocationWeight": 1,
        "applyAllocationPolicy": True,
        "location": None,
        "hasConnectionString": False,
        "builtin": True,
        "writesDevices": True,
        "tlsCertificate": str(hub_certificate(data_dir, HUB)),
    }
    certificate = hub_certificate(data_dir, HUB)  # the host part: no port
    names = x509.load_pem_x509_certificate(certificate.read_bytes()).extensions
    assert names.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [HUB]
    key = certificate.with_name(f"{HUB}-key.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    succeeded(hub(data_dir, "add", "az.example.net", "--connection-string", AZURE_HUB))
    plain = succeeded(hub(data_dir, "add", "plain.example.net")).stdout
    assert re.search(r"^host name +plain\.example\.net$", plain, re.MULTILINE), plain
    assert re.search(r"^devices +recorded only$", plain, re.MULTILINE), plain

    listed = json.loads(succeeded(hub(data_dir, "list", "--json")).stdout)  # the older name
    assert [(entry["hostName"], entry["builtin"], entry["writesDevices"]) for entry in listed] == [
        ("az.example.net", False, True),
        (f"{HUB}:8443", True, True),
        ("plain.example.net", False, False),
    ]
    table = succeeded(hub(data_dir, "list")).stdout
    assert re.search(rf"{HUB}:8443 .* built-in ", table), table
    assert re.search(r"az\.example\.net .* written \(connection string\)", table), table
    assert re.search(r"plain\.example\.net .* recorded only", table), table
    assert "SharedAccessKey" not in table + json.dumps(listed)
    assert json.loads(succeeded(hub(data_dir, "list", "-o", "json")).stdout) == listed

    shown = succeeded(hub(data_dir, "show", f"{HUB}:8443")).stdout
    assert re.search(
        r"^policies +iothubowner, service, device, registryRead, registryReadWrite$",
        shown,
        re.MULTILINE,
    ), shown
    assert "SharedAccessKey" not in shown
    with_keys = succeeded(hub(data_dir, "show", f"{HUB}:8443", "--show-keys")).stdout
    assert re.search(rf"^connection string +{re.escape(owner)}$", with_keys, re.MULTILINE)
    azure = json.loads(
        succeeded(hub(data_dir, "show", "az.example.net", "--show-keys", "-o", "json")).stdout
    )
    assert (azure["devices"], azure["connectionString"]) == (
        "written (connection string)",
        AZURE_HUB,
    )
    assert "connectionString" not in json.loads(
        succeeded(hub(data_dir, "show", "az.example.net", "-o", "json")).stdout
    )

    # A subprocess, to see all that reaches stdout: the connection string and nothing else.
    printed = run_dpsd("hub", "connection-string", f"{HUB}:8443", "--data-dir", str(data_dir))
    assert printed.returncode == 0, printed.stderr
    assert re.fullmatch(
        rf"HostName={HUB}:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=[A-Za-z0-9+/]{{43}}=\n",
        printed.stdout,
    ), printed.stdout
    reader = succeeded(
        hub(data_dir, "connection-string", f"{HUB}:8443", "--policy", "registryRead")
    ).stdout
    assert reader.startswith(f"HostName={HUB}:8443;SharedAccessKeyName=registryRead;")
    assert reader.strip() != printed.stdout.strip()

    succeeded(hub(data_dir, "remove", f"{HUB}:8443"))
    assert not certificate.exists()
    assert not key.exists()
    assert error_line(hub(data_dir, "connection-string", f"{HUB}:8443")) == (
        f"error: IoT hub '{HUB}:8443' is not linked"
    )


def test_builtin_hub_errors(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    succeeded(hub(data_dir, "add", HUB, "--builtin"))
    succeeded(hub(data_dir, "add", "plain.example.net"))
    cases = {
        ("connection-string", HUB, "--policy", "nope"): (
            f"error: IoT hub '{HUB}' has no policy 'nope'; policies: iothubowner, service, "
            "device, registryRead, registryReadWrite"
        ),
        ("connection-string", "plain.example.net"): (
            "error: IoT hub 'plain.example.net' is not a built-in hub: dpsd does not hold its keys"
        ),
        ("connection-string", "nothere.example.net"): (
            "error: IoT hub 'nothere.example.net' is not linked"
        ),
        ("show", "nothere.example.net"): "error: IoT hub 'nothere.example.net' is not linked",
        ("add", "az.example.net", "--builtin", "--connection-string", AZURE_HUB): (
            "error: a built-in IoT hub takes no connection string: dpsd serves it and makes "
            "its keys"
        ),
        ("add", HUB.upper(), "--builtin"): f"error: IoT hub '{HUB.upper()}' is linked already",
        ("add", "not a host", "--builtin"): (
            "error: IoT hub host name 'not a host' is not a host name"
        ),
    }
    for args, expected in cases.items():
        result = hub(data_dir, *args)
        assert error_line(result) == expected, args
        assert result.stdout == "", args


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def served_certificate(port: int, context: ssl.SSLContext, server_name: str) -> x509.Certificate:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def served_hub_certificate(
    server: DpsdProcess, port: int, name: str, expected: x509.Certificate
) -> x509.Certificate:
    """What the server serves for ``name`` once it serves ``expected``; a name the server
    looked up before its certificate was there is looked up again within seconds."""
    context = tls_context(Path(server.info["caCertificatePath"]))
    deadline = time.monotonic() + HANDSHAKE_DEADLINE
    while True:
        try:
            served = served_certificate(port, context, name)
        except ssl.SSLCertVerificationError:
            served = None
        if served == expected or time.monotonic() > deadline:
            assert served is not None, f"no certificate for {name}:\n{server.output()}"
            return served
        time.sleep(0.2)  # poll interval: the server caches a name it did not find briefly


def test_a_running_server_serves_a_hub_linked_after_it_started(
    tmp_path: Path, launch_dpsd: Callable[[Path], DpsdProcess]
) -> None:
    data_dir = tmp_path / "data"
    server = launch_dpsd(data_dir)
    ca = Path(server.info["caCertificatePath"])
    https = port_of(server.info["endpoints"]["https"])
    default = served_certificate(https, tls_context(ca), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):  # not yet a hub: the default one
        served_certificate(https, tls_context(ca), HUB)

    added = run_dpsd("hub", "add", HUB, "--builtin", "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    expected = x509.load_pem_x509_certificate(hub_certificate(data_dir, HUB).read_bytes())
    assert served_hub_certificate(server, https, HUB, expected) == expected
    assert served_certificate(https, tls_context(ca), "localhost") == default
    recorded = json.loads((data_dir / "endpoints.json").read_text())
    mqtt = port_of(recorded["mqtt"])  # the MQTT listener shares the listeners' TLS context
    assert served_certificate(mqtt, tls_context(ca), HUB) == expected


def test_a_server_issues_the_certificates_of_the_hubs_in_its_store(
    tmp_path: Path, launch_dpsd: Callable[[Path], DpsdProcess]
) -> None:
    """As for a dpsd whose data dir did not link the hub (one PostgreSQL store shared)."""
    data_dir = tmp_path / "data"
    succeeded(hub(data_dir, "add", f"{HUB}:9443", "--builtin"))
    for path in (data_dir / "tls" / "hubs").iterdir():
        path.unlink()
    server = launch_dpsd(data_dir)
    certificate = hub_certificate(data_dir, HUB)
    assert certificate.is_file()
    expected = x509.load_pem_x509_certificate(certificate.read_bytes())
    https = port_of(server.info["endpoints"]["https"])
    ca = Path(server.info["caCertificatePath"])
    assert served_certificate(https, tls_context(ca), HUB) == expected
