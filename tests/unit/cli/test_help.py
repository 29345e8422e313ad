"""Every command's help: a description of every option and argument, metavars that say what
to give (no Python types such as <str> or <bool>), option names whole."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from dpsd.cli import cli

RUNNER = CliRunner()


def _command_paths() -> Iterator[tuple[str, ...]]:
    root = get_command(cli)
    context = root.make_context("dpsd", ["--help"], resilient_parsing=True)
    for name in root.list_commands(context):  # type: ignore[attr-defined]
        command = root.get_command(context, name)  # type: ignore[attr-defined]
        sub_names = getattr(command, "list_commands", None)
        if sub_names is None:
            yield (name,)
            continue
        yield (name,)
        for sub in sub_names(context):
            yield (name, sub)


PATHS = sorted(_command_paths())


def _command(path: tuple[str, ...]):  # type: ignore[no-untyped-def]
    command = get_command(cli)
    context = command.make_context("dpsd", ["--help"], resilient_parsing=True)
    for name in path:
        command = command.get_command(context, name)  # type: ignore[attr-defined]
    return command


def test_every_command_is_found() -> None:
    assert ("enrollment", "create") in PATHS
    assert ("serve",) in PATHS
    assert len(PATHS) > 30


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_option_and_argument_is_described(path: tuple[str, ...]) -> None:
    command = _command(path)
    undescribed = [
        param.name
        for param in command.params
        if not getattr(param, "hidden", False) and not (getattr(param, "help", None) or "")
    ]
    assert undescribed == []


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_help_shows_no_python_types_and_whole_option_names(path: tuple[str, ...]) -> None:
    result = RUNNER.invoke(cli, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert not re.search(r"<[a-z_\[\]|]+>", text), text
    assert not re.search(r"\{[a-z_]+\}", text), text
    assert "…" not in text
    commands = text.split("Commands:")[1] if "Commands:" in text else ""
    assert "..." not in commands, text  # a summary cut short
