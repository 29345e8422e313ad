"""Help, the version and a command that needs no service load neither the server, the
store, TLS, httpx nor Rich (bench/cli_start.py measures what that is worth); the commands
that open the store load none of the server (bench/store_commands.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_imports import NEVER_FOR_A_STORE_COMMAND, NEVER_FOR_HELP, run_dpsd_command


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("enrollment", "--help"),
        ("enrollment", "create", "--help"),
        ("group", "list", "--help"),
        ("hub", "add", "--help"),
        ("certificate", "--help"),
        ("import", "--help"),
    ],
)
def test_help_and_version_load_nothing_heavy(args: tuple[str, ...]) -> None:
    run = run_dpsd_command(*args)
    assert run.exit_code == 0, run.stderr
    assert run.stdout
    assert run.loaded(NEVER_FOR_HELP) == []


def test_help_loads_no_command_module() -> None:
    run = run_dpsd_command("--help")
    assert "enrollment" in run.stdout
    assert "certificate" in run.stdout
    assert sorted(name for name in run.modules if name.startswith("dpsd.cli.")) == [
        "dpsd.cli.lazy",
        "dpsd.cli.options",
    ]


def test_a_command_loads_only_its_own_module() -> None:
    run = run_dpsd_command("group", "list", "--help")
    commands = {name for name in run.modules if name.startswith("dpsd.cli.")}
    assert "dpsd.cli.enrollments" in commands
    assert not commands & {"dpsd.cli.serve", "dpsd.cli.hubs", "dpsd.cli.certificates"}


def test_a_device_key_derived_offline_loads_nothing_heavy() -> None:
    key = "c2VjcmV0LWdyb3VwLWtleS1vZi0zMi1ieXRlcy0hISE="
    run = run_dpsd_command("device-key", "--key", key, "--registration-id", "sensor-1")
    assert run.exit_code == 0, run.stderr
    assert len(run.stdout.strip()) == 44  # a base64 HMAC-SHA256
    assert run.loaded(NEVER_FOR_HELP) == []


@pytest.mark.parametrize(
    "command", [("info",), ("hub", "list"), ("certificate", "list"), ("policy", "list")]
)
def test_a_store_command_loads_none_of_the_server(command: tuple[str, ...], tmp_path: Path) -> None:
    data_dir = ("--data-dir", str(tmp_path / "data"))
    assert run_dpsd_command("info", *data_dir).exit_code == 0  # a new data dir, migrated
    run = run_dpsd_command(*command, *data_dir)
    assert run.exit_code == 0, run.stderr
    assert "dpsd.administration" in run.modules
    assert run.loaded(NEVER_FOR_A_STORE_COMMAND) == []
