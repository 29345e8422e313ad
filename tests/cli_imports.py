"""Which modules a ``dpsd`` command imports, run as the entry point runs it in a fresh
interpreter: the guard of the command's start-up time that does not depend on a clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NEVER_FOR_A_CLIENT_COMMAND = (
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "uvicorn",
    "starlette",
    "proton",
    "cproton",
    "cryptography",
    "msgspec",
    "prometheus_client",
    "pydantic",  # typer 0.29 and later convert every option through it
    "rich",
    "pygments",  # httpx's own command line
    "click",  # the same (typer brings its own copy)
)
"""What the server, the store or the help panels need, and a client command must not load."""

NEVER_FOR_HELP = (*NEVER_FOR_A_CLIENT_COMMAND, "httpx", "httpcore", "ssl", "asyncio", "dpsd.client")

NEVER_FOR_A_STORE_COMMAND = (
    "dpsd.app",
    "dpsd.server",
    "dpsd.http",
    "dpsd.mqtt",
    "dpsd.amqp",
    "dpsd.devices",
    "dpsd.integrations",
    "proton",
    "cproton",
    "uvicorn",
    "starlette",
    "websockets",
    "httpx",
    "prometheus_client",
    "alembic",  # a store at the newest schema is recognised without it
)
"""What serving needs, and ``dpsd info``, ``hub``, ``certificate`` and ``policy`` must not
load: they open the store through ``dpsd.administration``."""

_RUN = """
import json, sys
report = sys.argv[1]
sys.argv = ["dpsd", *sys.argv[2:]]
from dpsd.cli import main
try:
    main()
    code = 0
except SystemExit as stop:
    code = stop.code
loaded = sorted(name for name, module in sys.modules.items() if module is not None)
with open(report, "w") as file:
    json.dump({"code": code, "modules": loaded}, file)
"""


@dataclass(frozen=True, slots=True)
class Run:
    exit_code: int
    modules: frozenset[str]
    stdout: str
    stderr: str

    def loaded(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` imported, as packages or modules."""
        return [
            name
            for name in names
            if name in self.modules or any(m.startswith(f"{name}.") for m in self.modules)
        ]


def run_dpsd_command(*args: str, env: Mapping[str, str] | None = None) -> Run:
    """``dpsd ARGS`` through ``dpsd.cli.main`` in a fresh interpreter, without the DPSD_*
    settings of this environment (but those ``env`` gives)."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("DPSD_")
    }
    environment.update(env or {})
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        result = subprocess.run(
            [sys.executable, "-c", _RUN, str(report), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert report.exists(), f"the command did not finish:\n{result.stderr}"
        recorded = json.loads(report.read_text())
    return Run(recorded["code"] or 0, frozenset(recorded["modules"]), result.stdout, result.stderr)
