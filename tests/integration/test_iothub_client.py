"""The IoT hub registry client: against a built-in hub in-process for what works, and
against a mock of what an Azure IoT hub does that ours cannot be made to (refusals with
its classic body, server errors, timeouts, refused connections)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dpsd.domain.hub import OWNER_HUB_POLICY
from dpsd.domain.hub_device import (
    DeviceIdentity,
    DeviceStatus,
    HubAuthentication,
    HubAuthenticationType,
    HubSymmetricKey,
    TwinContent,
    X509Thumbprint,
)
from dpsd.integrations.hub_http import HttpxHubTransport
from dpsd.integrations.in_process import InProcessTransport
from dpsd.integrations.iothub import IotHubRestRegistry
from dpsd.service.ports import HubConnection, HubRegistryError
from tests.integration.conftest import HUB_HOST, BuiltinHub

KEY = base64.b64encode(b"k" * 32).decode()
DEVICE_KEY = base64.b64encode(b"d" * 32).decode()
THUMBPRINT = "CD" * 32
AZURE = HubConnection("myhub.azure-devices.net", "iothubowner", KEY)
UNAUTHORIZED_BODY = (
    '{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":'
    '"Tracking ID:2b1f3b8fd3a04e3e8c2c3c5b0f3d8d5e-G:10-TimeStamp:12/10/2020 06:42:31"}'
)


def sas_identity(device_id: str, *, iot_edge: bool = False) -> DeviceIdentity:
    keys = HubSymmetricKey(DEVICE_KEY, base64.b64encode(b"e" * 32).decode())
    return DeviceIdentity(
        device_id, HubAuthentication(HubAuthenticationType.SAS, keys), iot_edge=iot_edge
    )


def x509_identity(device_id: str) -> DeviceIdentity:
    thumbprints = X509Thumbprint(THUMBPRINT, THUMBPRINT)
    return DeviceIdentity(
        device_id,
        HubAuthentication(HubAuthenticationType.SELF_SIGNED, x509_thumbprint=thumbprints),
    )


# --- against a built-in hub -----------------------------------------------------------------


@pytest.fixture(params=["builtin", "as if remote"])
async def hub_client(
    builtin: BuiltinHub, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[IotHubRestRegistry, HubConnection]]:
    """The client on the built-in hub: reached as dpsd reaches its own built-in hubs, or
    as an Azure hub would be (the same requests, through the other transport)."""
    transport = httpx.ASGITransport(app=builtin.app)
    async with transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport), InProcessTransport(builtin.app))
        connection = HubConnection(
            HUB_HOST, OWNER_HUB_POLICY, builtin.key(), builtin=request.param == "builtin"
        )
        yield registry, connection


async def test_put_device_creates_then_updates(
    builtin: BuiltinHub, hub_client: tuple[IotHubRestRegistry, HubConnection]
) -> None:
    registry, hub = hub_client
    await registry.put_device(hub, sas_identity("landed"))
    created = (await builtin.request("GET", "/devices/landed")).json()
    assert created["authentication"]["symmetricKey"]["primaryKey"] == DEVICE_KEY
    await registry.replace_twin(hub, "landed", TwinContent(tags={"site": "north"}))
    await registry.put_device(hub, x509_identity("landed"))
    updated = (await builtin.request("GET", "/devices/landed")).json()
    assert updated["generationId"] == created["generationId"]
    assert updated["authentication"]["type"] == "selfSigned"
    assert updated["authentication"]["x509Thumbprint"]["primaryThumbprint"] == THUMBPRINT
    assert await registry.get_twin(hub, "landed") == TwinContent(tags={"site": "north"})


async def test_an_edge_device_lands_with_its_capability(
    builtin: BuiltinHub, hub_client: tuple[IotHubRestRegistry, HubConnection]
) -> None:
    registry, hub = hub_client
    await registry.put_device(hub, sas_identity("edge", iot_edge=True))
    device = (await builtin.request("GET", "/devices/edge")).json()
    assert device["capabilities"] == {"iotEdge": True}
    assert device["status"] == DeviceStatus.ENABLED.value


async def test_twins_replaced_and_read(
    builtin: BuiltinHub, hub_client: tuple[IotHubRestRegistry, HubConnection]
) -> None:
    registry, hub = hub_client
    await registry.put_device(hub, sas_identity("twinned"))
    first = TwinContent(tags={"a": {"b": 1}}, desired={"rate": 5, "mode": "fast"})
    await registry.replace_twin(hub, "twinned", first)
    assert await registry.get_twin(hub, "twinned") == first
    second = TwinContent(desired={"rate": 6})
    await registry.replace_twin(hub, "twinned", second)
    assert await registry.get_twin(hub, "twinned") == second
    wire = (await builtin.request("GET", "/twins/twinned")).json()
    assert wire["properties"]["desired"]["rate"] == 6
    assert "$metadata" in wire["properties"]["desired"]


async def test_a_missing_device_has_no_twin_and_deletes_fine(
    hub_client: tuple[IotHubRestRegistry, HubConnection],
) -> None:
    registry, hub = hub_client
    assert await registry.get_twin(hub, "nobody") is None
    await registry.delete_device(hub, "nobody")


async def test_delete_device(
    builtin: BuiltinHub, hub_client: tuple[IotHubRestRegistry, HubConnection]
) -> None:
    registry, hub = hub_client
    await registry.put_device(hub, sas_identity("gone"))
    await registry.delete_device(hub, "gone")
    assert (await builtin.request("GET", "/devices/gone")).status_code == 404


async def test_ids_are_url_encoded(
    builtin: BuiltinHub, hub_client: tuple[IotHubRestRegistry, HubConnection]
) -> None:
    registry, hub = hub_client
    device_id = "a#b?c%d$e'f"
    await registry.put_device(hub, sas_identity(device_id))
    await registry.replace_twin(hub, device_id, TwinContent(tags={"ok": True}))
    assert await registry.get_twin(hub, device_id) == TwinContent(tags={"ok": True})
    await registry.delete_device(hub, device_id)
    assert await registry.get_twin(hub, device_id) is None


async def test_the_hub_refuses_a_wrong_key(builtin: BuiltinHub) -> None:
    transport = httpx.ASGITransport(app=builtin.app)
    async with transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport), HttpxHubTransport(transport))
        wrong = HubConnection(HUB_HOST, OWNER_HUB_POLICY, KEY, builtin=True)
        with pytest.raises(HubRegistryError) as caught:
            await registry.put_device(wrong, sas_identity("refused"))
    assert caught.value.status == 401
    assert caught.value.message.startswith('{"Message":"ErrorCode:IotHubUnauthorizedAccess;')
    assert KEY not in caught.value.message


async def test_a_policy_that_may_not_write_is_refused(builtin: BuiltinHub) -> None:
    transport = httpx.ASGITransport(app=builtin.app)
    async with transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport), HttpxHubTransport(transport))
        reader = HubConnection(HUB_HOST, "registryRead", builtin.key("registryRead"), builtin=True)
        with pytest.raises(HubRegistryError) as caught:
            await registry.put_device(reader, sas_identity("refused"))
    assert caught.value.status == 401
    assert "RegistryWrite" in caught.value.message


async def test_a_builtin_hub_needs_a_dpsd_serving_builtin_hubs() -> None:
    async with httpx.MockTransport(unreachable) as transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport), None)
        hub = HubConnection(HUB_HOST, OWNER_HUB_POLICY, KEY, builtin=True)
        with pytest.raises(HubRegistryError, match="serves no built-in hubs") as caught:
            await registry.get_twin(hub, "any")
    assert caught.value.status is None


# --- what goes on the wire ------------------------------------------------------------------


class Recorder:
    """A mock hub answering from a script, keeping every request."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError("no request was expected")


def registry_on(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> tuple[IotHubRestRegistry, httpx.MockTransport]:
    transport = httpx.MockTransport(handler)
    return IotHubRestRegistry(
        HttpxHubTransport(transport, timeout), HttpxHubTransport(transport, timeout), clock=clock
    ), transport


def token_fields(request: httpx.Request) -> dict[str, str]:
    scheme, _, rest = request.headers["authorization"].partition(" ")
    assert scheme == "SharedAccessSignature"
    return dict(part.split("=", 1) for part in rest.split("&"))


async def test_requests_carry_a_sas_token_as_the_python_client_signs_it() -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={}))
    hub = HubConnection("myhub.example:8443", "iothubowner", KEY)
    registry, transport = registry_on(recorder, clock=lambda: 1_700_000_000.5)
    async with transport:
        await registry.put_device(hub, sas_identity("d1"))
    request = recorder.requests[0]
    fields = token_fields(request)
    assert fields["sr"] == "myhub.example%3A8443"
    assert fields["se"] == str(1_700_000_000 + 3600)
    assert fields["skn"] == "iothubowner"
    expected = hmac.new(
        base64.b64decode(KEY), f"{fields['sr']}\n{fields['se']}".encode(), hashlib.sha256
    ).digest()
    assert base64.b64decode(unquote(fields["sig"])) == expected
    assert request.url.host == "myhub.example"
    assert request.url.port == 8443
    assert request.headers["user-agent"].startswith("dpsd/")
    assert parse_qs(request.url.query.decode()) == {"api-version": ["2021-04-12"]}


async def test_a_token_is_used_for_five_minutes_then_signed_anew() -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={}))
    hub = HubConnection("myhub.example", "iothubowner", KEY)
    now = [1_700_000_000.0]
    registry, transport = registry_on(recorder, clock=lambda: now[0])
    async with transport:
        await registry.put_device(hub, sas_identity("d1"))
        now[0] += 299
        await registry.replace_twin(hub, "d1", TwinContent(tags={"a": 1}))
        now[0] += 1
        await registry.delete_device(hub, "d1")
        rotated = HubConnection(
            "myhub.example", "iothubowner", base64.b64encode(b"rotated key " * 3).decode()
        )
        await registry.delete_device(rotated, "d1")
    expiries = [token_fields(request)["se"] for request in recorder.requests]
    assert expiries == [str(1_700_003_600)] * 2 + [str(1_700_003_900)] * 2
    first, reused, renewed, other_key = (r.headers["authorization"] for r in recorder.requests)
    assert first == reused
    assert renewed != first
    assert other_key != renewed  # another key signs its own token


async def test_put_device_creates_then_updates_on_conflict() -> None:
    statuses = iter([409, 200])
    recorder = Recorder(lambda request: httpx.Response(next(statuses), json={}))
    registry, transport = registry_on(recorder)
    async with transport:
        await registry.put_device(AZURE, x509_identity("dev/1"))
    create, update = recorder.requests
    for request in (create, update):
        assert request.method == "PUT"
        assert request.url.raw_path == b"/devices/dev%2F1?api-version=2021-04-12"
        assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert "if-match" not in create.headers
    assert update.headers["if-match"] == '"*"'
    body = httpx.Response(200, content=create.content).json()
    assert body == {
        "deviceId": "dev/1",
        "status": "enabled",
        "authentication": {
            "symmetricKey": {"primaryKey": None, "secondaryKey": None},
            "type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": THUMBPRINT, "secondaryThumbprint": THUMBPRINT},
        },
        "capabilities": {"iotEdge": False},
    }


async def test_twin_writes_and_deletes_match_anything() -> None:
    recorder = Recorder(
        lambda request: httpx.Response(204 if request.method == "DELETE" else 200, json={})
    )
    registry, transport = registry_on(recorder)
    async with transport:
        await registry.replace_twin(AZURE, "d", TwinContent(tags={}, desired={"x": 1}))
        await registry.delete_device(AZURE, "d")
    replace, delete = recorder.requests
    assert (replace.method, replace.url.path, replace.headers["if-match"]) == (
        "PUT",
        "/twins/d",
        '"*"',
    )
    assert httpx.Response(200, content=replace.content).json() == {
        "tags": {},
        "properties": {"desired": {"x": 1}},
    }
    assert (delete.method, delete.url.path, delete.headers["if-match"]) == (
        "DELETE",
        "/devices/d",
        '"*"',
    )


async def test_get_twin_reads_an_azure_twin_without_what_the_hub_owns() -> None:
    twin = {
        "deviceId": "d",
        "etag": "AAAAAAAAAAc=",
        "version": 7,
        "tags": {"site": "north"},
        "properties": {
            "desired": {"rate": 5, "$metadata": {"$lastUpdated": "x"}, "$version": 3},
            "reported": {"battery": 80, "$version": 9},
        },
    }
    registry, transport = registry_on(lambda request: httpx.Response(200, json=twin))
    async with transport:
        assert await registry.get_twin(AZURE, "d") == TwinContent(
            tags={"site": "north"}, desired={"rate": 5}
        )


async def test_a_builtin_hub_is_reached_through_its_own_client_under_its_name() -> None:
    recorder = Recorder(lambda request: httpx.Response(404, json={}))
    azure = httpx.MockTransport(unreachable)
    builtin = httpx.MockTransport(recorder)
    registry = IotHubRestRegistry(HttpxHubTransport(azure), HttpxHubTransport(builtin))
    hub = HubConnection("hub.example:8443", OWNER_HUB_POLICY, KEY, builtin=True)
    async with azure, builtin:
        assert await registry.get_twin(hub, "d") is None
    request = recorder.requests[0]
    assert str(request.url) == "https://hub.example:8443/twins/d?api-version=2021-04-12"
    assert request.headers["host"] == "hub.example:8443"
    assert token_fields(request)["sr"] == "hub.example%3A8443"


# --- what an Azure hub does that ours cannot be made to -------------------------------------


async def test_a_refusal_carries_the_hub_body_and_status() -> None:
    registry, transport = registry_on(
        lambda request: httpx.Response(401, content=UNAUTHORIZED_BODY.encode())
    )
    async with transport:
        with pytest.raises(HubRegistryError) as caught:
            await registry.put_device(AZURE, sas_identity("d"))
    assert caught.value.status == 401
    assert caught.value.message == UNAUTHORIZED_BODY


async def test_a_server_error_carries_its_status() -> None:
    registry, transport = registry_on(lambda request: httpx.Response(500, content=b""))
    async with transport:
        for call in (
            registry.put_device(AZURE, sas_identity("d")),
            registry.get_twin(AZURE, "d"),
            registry.replace_twin(AZURE, "d", TwinContent()),
            registry.delete_device(AZURE, "d"),
        ):
            with pytest.raises(HubRegistryError) as caught:
                await call
            assert caught.value.status == 500
            assert caught.value.message == "IoT hub myhub.azure-devices.net answered 500"


async def test_a_long_error_body_is_cut() -> None:
    registry, transport = registry_on(lambda request: httpx.Response(503, content=b"x" * 100_000))
    async with transport:
        with pytest.raises(HubRegistryError) as caught:
            await registry.delete_device(AZURE, "d")
    assert caught.value.status == 503
    assert len(caught.value.message) <= 1024


async def test_keys_and_signatures_never_show_in_a_message() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        # A hub (or a proxy) that echoes the request back in its error.
        text = f"{request.headers['authorization']} {request.content.decode()} {KEY}"
        return httpx.Response(400, content=text.encode())

    registry, transport = registry_on(echo)
    async with transport:
        with pytest.raises(HubRegistryError) as caught:
            await registry.put_device(AZURE, sas_identity("d"))
    message = caught.value.message
    assert caught.value.status == 400
    assert KEY not in message
    assert DEVICE_KEY not in message
    assert "&sig=[hidden]&" in message


async def test_a_timeout_is_a_failure_without_status() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    registry, transport = registry_on(slow, timeout=2.5)
    async with transport:
        with pytest.raises(HubRegistryError) as caught:
            await registry.get_twin(AZURE, "d")
    assert caught.value.status is None
    assert caught.value.message == "IoT hub myhub.azure-devices.net did not answer within 2.5 s"


async def test_a_refused_connection_is_a_failure_without_status() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    registry, transport = registry_on(refused)
    async with transport:
        with pytest.raises(HubRegistryError) as caught:
            await registry.put_device(AZURE, sas_identity("d"))
    assert caught.value.status is None
    assert caught.value.message == (
        "IoT hub myhub.azure-devices.net could not be reached: [Errno 111] Connection refused"
    )
    assert KEY not in caught.value.message


async def test_a_real_refused_connection() -> None:
    async with httpx.AsyncHTTPTransport() as transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport, 5), None)
        hub = HubConnection("127.0.0.1:9", OWNER_HUB_POLICY, KEY)
        with pytest.raises(HubRegistryError, match="could not be reached") as caught:
            await registry.delete_device(hub, "d")
    assert caught.value.status is None


async def test_a_twin_that_is_not_one() -> None:
    registry, transport = registry_on(lambda request: httpx.Response(200, content=b"<html>"))
    async with transport:
        with pytest.raises(HubRegistryError, match="something other than a twin") as caught:
            await registry.get_twin(AZURE, "d")
    assert caught.value.status == 200


async def test_a_key_that_is_not_base64() -> None:
    registry, transport = registry_on(unreachable)
    broken = HubConnection(AZURE.host_name, "iothubowner", "not*base64")
    async with transport:
        with pytest.raises(HubRegistryError, match="not base64") as caught:
            await registry.delete_device(broken, "d")
    assert "not*base64" not in caught.value.message
    assert caught.value.status is None


# --- over TLS: the hub's name in SNI, its certificate checked against it -------------------


def certificate_for(host: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate naming ``host``, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = directory / f"{host}.pem", directory / f"{host}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


class TlsListener:
    """A TLS listener on 127.0.0.1 that answers every request 404 and notes the SNI name
    and Host header it was given."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificate, key)
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        self.context.sni_callback = self._note_server_name

    def _note_server_name(self, _socket: object, server_name: str | None, _context: object) -> None:
        self.server_names.append(server_name)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("host:"):
                self.hosts.append(line.split(":", 1)[1].strip())
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def tls_listener(tmp_path: Path) -> AsyncIterator[tuple[TlsListener, int, Path]]:
    certificate, key = certificate_for("localhost", tmp_path)
    listener = TlsListener(certificate, key)
    server = await asyncio.start_server(listener.serve, "127.0.0.1", 0, ssl=listener.context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield listener, port, certificate


async def test_a_hub_is_reached_over_tls_under_its_name(
    tls_listener: tuple[TlsListener, int, Path],
) -> None:
    listener, port, certificate = tls_listener
    trust = ssl.create_default_context(cafile=str(certificate))
    async with httpx.AsyncHTTPTransport(verify=trust) as transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport, 5), None)
        hub = HubConnection(f"localhost:{port}", OWNER_HUB_POLICY, KEY)
        assert await registry.get_twin(hub, "d") is None
    assert listener.server_names == ["localhost"]
    assert listener.hosts == [f"localhost:{port}"]


async def test_a_certificate_for_another_name_is_refused(
    tls_listener: tuple[TlsListener, int, Path],
) -> None:
    listener, port, certificate = tls_listener
    trust = ssl.create_default_context(cafile=str(certificate))
    async with httpx.AsyncHTTPTransport(verify=trust) as transport:
        registry = IotHubRestRegistry(HttpxHubTransport(transport, 5), None)
        other = HubConnection(f"127.0.0.1:{port}", OWNER_HUB_POLICY, KEY)
        with pytest.raises(HubRegistryError, match="could not be reached") as caught:
            await registry.get_twin(other, "d")
    assert caught.value.status is None
    assert "certificate" in caught.value.message.lower()
    assert listener.hosts == []
