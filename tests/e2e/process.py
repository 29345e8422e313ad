"""Run ``dpsd`` as a subprocess; a ``dpsd serve`` is ready once it has recorded the ports
it bound (DATA_DIR/endpoints.json).

Every wait here is bounded: the server must be listening within START_TIMEOUT seconds and
must stop cleanly (exit code 0) within STOP_TIMEOUT seconds of SIGTERM or SIGINT.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient

DPSD = (sys.executable, "-m", "dpsd")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0
POLL_INTERVAL = 0.02


def dpsd_env() -> dict[str, str]:
    """The environment without DPSD_* settings (a DPSD_DATABASE would change the store)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPSD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # rich wraps at 80 columns otherwise
    return env


def run_dpsd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a ``dpsd`` command to completion (bounded)."""
    return subprocess.run(
        [*DPSD, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=dpsd_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def info_json(data_dir: Path) -> dict[str, Any]:
    """The parsed output of ``dpsd info --json --data-dir DATA_DIR``."""
    result = run_dpsd("info", "--json", "--data-dir", str(data_dir))
    assert result.returncode == 0, (
        f"dpsd info failed with {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def endpoints_path(data_dir: Path) -> Path:
    return data_dir / "endpoints.json"


def _read_endpoints(path: Path) -> dict[str, Any] | None:
    """The recorded endpoints, or None while the file is missing or half written."""
    try:
        recorded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def recorded_endpoints(recorded: dict[str, Any]) -> dict[str, Any]:
    """The endpoints in the parsed DATA_DIR/endpoints.json."""
    return {"https": recorded.get("https"), "http": recorded.get("http")}


@dataclass
class DpsdProcess:
    """A running ``dpsd serve`` with its data dir, combined output and ``info --json``."""

    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Send ``signum`` and wait (bounded) for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
            pytest.fail(
                f"dpsd did not stop within {STOP_TIMEOUT}s of {signum.name}:\n{self.output()}"
            )

    def stop_cleanly(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Stop with ``signum`` and check the exit is clean."""
        code = self.stop(signum)
        output = self.output()
        assert code == 0, f"dpsd exited with {code} after {signum.name}:\n{output}"
        assert "dpsd stopped." in output, output
        assert not endpoints_path(self.data_dir).exists(), "endpoints.json outlived the server"


def start_dpsd(data_dir: Path, log_path: Path, *extra_args: str) -> DpsdProcess:
    """Start ``dpsd serve`` on ``data_dir`` with HTTPS, HTTP, MQTT and AMQP on free ports of
    127.0.0.1 and return once it has recorded the ports it bound."""
    listeners = ["--https-port", "0", "--http-port", "0", "--mqtt-port", "0", "--amqp-port", "0"]
    return start_dpsd_listening(data_dir, log_path, [*listeners, *extra_args])


def start_dpsd_listening(
    data_dir: Path,
    log_path: Path,
    serve_args: Sequence[str],
    info_args: Sequence[str] = (),
) -> DpsdProcess:
    """Start ``dpsd serve --data-dir DATA_DIR *SERVE_ARGS`` on the listeners the caller names
    (start_dpsd picks free ports of 127.0.0.1) and return once it has recorded the ports it
    bound. ``info`` is ``dpsd info --json --data-dir DATA_DIR *INFO_ARGS``: pass the same
    ``--hostname``, which the connection string names."""
    recorded_path = endpoints_path(data_dir)
    assert not recorded_path.exists(), f"stale {recorded_path}: is another dpsd running?"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*DPSD, "serve", "--data-dir", str(data_dir), *serve_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dpsd_env(),
        )
    server = DpsdProcess(data_dir, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while (recorded := _read_endpoints(recorded_path)) is None:
        code = process.poll()
        if code is not None:
            pytest.fail(f"dpsd serve exited early with code {code}:\n{server.output()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
            pytest.fail(f"dpsd serve was not listening after {START_TIMEOUT}s:\n{server.output()}")
        time.sleep(POLL_INTERVAL)  # poll interval, not a wait for readiness
    try:
        result = run_dpsd("info", "--json", "--data-dir", str(data_dir), *info_args)
        assert result.returncode == 0, (
            f"dpsd info failed with {result.returncode}:\n{result.stdout}{result.stderr}"
        )
        server.info = json.loads(result.stdout)
        assert server.info["endpoints"] == recorded_endpoints(recorded), (server.info, recorded)
        if "pid" in recorded:
            assert recorded["pid"] == process.pid, recorded
    except BaseException:
        server.stop()
        raise
    return server


def sdk_client(info: dict[str, Any]) -> DeviceProvisioningClient:
    """The official service SDK over HTTPS, trusting the dpsd CA."""
    return DeviceProvisioningClient.from_connection_string(
        info["serviceConnectionString"], connection_verify=info["caCertificatePath"]
    )


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``; in CI (``CI`` set), where Node and root are given, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def bind_problem(address: str, port: int) -> str | None:
    """Why ``address:port`` cannot be bound here (a privileged port without root, or in use),
    or None when it can."""
    # Probed as dpsd binds (SO_REUSEADDR): TIME_WAIT leftovers of an earlier run do not count.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except PermissionError:
            return f"cannot bind {address}:{port} (needs root or CAP_NET_BIND_SERVICE)"
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"{address}:{port} is already in use"
            return f"cannot bind {address}:{port}: {error}"
    return None
