"""Run the ``dpsd`` client commands in-process (typer's CliRunner) and read what they print:
JSON on stdout with ``-o json``, failures as one ``error:`` line on stderr."""

from __future__ import annotations

import json
import os
from typing import Any

from typer.testing import CliRunner, Result

from dpsd.cli import cli

RUNNER = CliRunner()


def invoke(*args: str) -> Result:
    """``dpsd ARGS`` in this process, without the DPSD_* settings of the environment;
    an unexpected exception is raised, not turned into an exit status."""
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("DPSD_")}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns otherwise
    return RUNNER.invoke(cli, list(args), env=env, catch_exceptions=False)


def target(info: dict[str, Any]) -> tuple[str, ...]:
    """The options naming the server ``dpsd info --json`` describes."""
    return (
        "--connection-string",
        info["serviceConnectionString"],
        "--ca-file",
        info["caCertificatePath"],
    )


def succeeded(result: Result) -> Result:
    assert result.exit_code == 0, (
        f"exit status {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def output_json(result: Result) -> Any:
    """What a command run with ``-o json`` printed, once it has succeeded."""
    return json.loads(succeeded(result).stdout)


def error_line(result: Result, status: int = 1) -> str:
    """The one line a failed command wrote on stderr, once its exit status is checked."""
    assert result.exit_code == status, (
        f"exit status {result.exit_code}, not {status}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"not one line on stderr:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]
