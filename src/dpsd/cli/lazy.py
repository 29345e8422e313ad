"""Commands loaded when they run: ``dpsd enrollment list`` imports the enrollment commands
and builds their options, not those of serve, hub, certificate and the rest, and
``dpsd --help`` lists every command from one line of help each, importing none of them."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import typer
from typer.core import TyperGroup
from typer.main import get_command

if TYPE_CHECKING:
    from typer._click import Command, Context, HelpFormatter, Parameter


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """``attribute`` of ``module``: a Typer app (a group of commands) or a command function.
    ``summary`` is its line in ``dpsd --help``, and a group's own help."""

    module: str
    attribute: str
    summary: str

    def load(self, name: str, context_settings: dict[str, object]) -> Command:
        target = getattr(importlib.import_module(self.module), self.attribute)
        if not isinstance(target, typer.Typer):
            app = typer.Typer(add_completion=False, rich_markup_mode=None)
            app.command(name, context_settings=context_settings)(target)
            target = app
        command = get_command(target)
        name_the_values(command)
        command.name = name
        command.short_help = self.summary
        if not command.help:
            command.help = self.summary
        return command


def name_the_values(command: Command) -> None:
    """Metavars that say what to give, for the options and arguments that name none: the
    option's name in capitals (``--data-dir DATA_DIR``, as argparse writes it), the choices
    of an enumeration as they are spelt (``[symmetricKey|x509|tpm|none]``), instead of
    Typer's Python types (``<str>``, ``<path>``, ``<list[str]>``)."""
    for param in command.params:
        if param.metavar is None and not getattr(param, "is_flag", False):
            param.metavar = _metavar(param)
    for subcommand in getattr(command, "commands", {}).values():
        name_the_values(subcommand)


def _metavar(param: Parameter) -> str:
    choices = getattr(param.type, "choices", None)
    if choices:
        return "[" + "|".join(str(choice) for choice in choices) + "]"
    longest = max(param.opts, key=len).lstrip("-")
    return longest.replace("-", "_").upper()


class LazyGroup(TyperGroup):
    """A group whose commands are ``lazy_commands``, each loaded when first asked for."""

    lazy_commands: ClassVar[Mapping[str, LazyCommand]] = {}
    context_settings_of_commands: ClassVar[dict[str, object]] = {}

    def list_commands(self, ctx: Context) -> list[str]:
        return [*self.lazy_commands, *super().list_commands(ctx)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        loaded = super().get_command(ctx, cmd_name)
        entry = self.lazy_commands.get(cmd_name)
        if loaded is not None or entry is None:
            return loaded
        command = entry.load(cmd_name, self.context_settings_of_commands)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Each command's summary, without loading it."""
        rows = [(name, entry.summary) for name, entry in self.lazy_commands.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
