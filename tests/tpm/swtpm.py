"""A software TPM (swtpm, libtpms) for end-to-end tests, and the device-side process that
drives it (tests/tpm/device_tpm.py under the system's python3, where tpm2-pytss lives).

swtpm cannot bind port 0 and its TCTI needs the control channel on the command port + 1:
two free ports of the given address are picked, and swtpm started as a daemon, which exits
only once both sockets are bound (or fails, when another process took a port meanwhile:
then two other ports are tried). Tests skip without swtpm or tpm2-pytss, unless CI is set.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.process import skip_or_fail

SYSTEM_PYTHON = "/usr/bin/python3"
DEVICE_TPM = Path(__file__).with_name("device_tpm.py")
ATTEMPTS = 20


def tpm_tools_problem() -> str | None:
    """Why the software TPM cannot run here (scripts/install installs it), or None."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (scripts/install: apt-get install swtpm swtpm-tools)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import tpm2_pytss"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} cannot import tpm2_pytss (apt-get install python3-tpm2-pytss)"
    return None


def _port_pair(address: str) -> int:
    """A port free on ``address`` whose successor is free too (both let go again)."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind((address, 0))
            port: int = first.getsockname()[1]
            try:
                second.bind((address, port + 1))
            except OSError:
                continue
            return port


class SwTpm:
    """One swtpm daemon with its state in ``state_dir``; ``port`` takes TPM commands and
    ``port + 1`` is its control channel."""

    def __init__(self, address: str, state_dir: Path) -> None:
        problem = tpm_tools_problem()
        if problem:
            skip_or_fail(problem)
        self.address = address
        state_dir.mkdir(parents=True, exist_ok=True)
        self._pid_file = state_dir / "swtpm.pid"
        failures = []
        for _ in range(ATTEMPTS):
            self.port = _port_pair(address)
            started = subprocess.run(
                [
                    *("swtpm", "socket", "--tpm2", "--daemon"),
                    *("--pid", f"file={self._pid_file}"),
                    *("--server", f"type=tcp,port={self.port},bindaddr={address}"),
                    *("--ctrl", f"type=tcp,port={self.port + 1},bindaddr={address}"),
                    *("--tpmstate", f"dir={state_dir}"),
                    *("--flags", "not-need-init,startup-clear"),
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if started.returncode == 0:
                return
            failures.append(started.stderr.strip())
        raise RuntimeError(f"swtpm did not start in {ATTEMPTS} attempts: {failures[-1]}")

    def stop(self) -> None:
        os.kill(int(self._pid_file.read_text()), signal.SIGTERM)


class DeviceTpm:
    """The device side: tests/tpm/device_tpm.py on ``tpm``, one JSON request a line."""

    def __init__(self, tpm: SwTpm) -> None:
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, str(DEVICE_TPM), tpm.address, str(tpm.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, **request: Any) -> dict[str, Any]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        assert line, f"the device TPM process ended ({self._process.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def keys(self) -> tuple[str, str]:
        """Create the EK and SRK from the SDKs' templates: their base64 TPM2B_PUBLIC."""
        answer = self._ask(op="keys")
        return answer["ek"], answer["srk"]

    def activate(self, blob: str) -> None:
        """ActivateCredential, Import and Load: the blob's key signs from now on."""
        answer = self._ask(op="activate", blob=blob)
        assert answer.get("ok"), answer

    def sign(self, data: str) -> bytes:
        answer = self._ask(op="sign", data=data)
        assert "signature" in answer, answer
        return base64.b64decode(answer["signature"])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)
