"""How every dpsd command reports what went wrong: one line on stderr, never a traceback,
and its exit status (1: it failed; 2: it was used wrongly, as for a usage error)."""

from __future__ import annotations

from typing import NoReturn

import typer

FAILED = 1
USAGE = 2


def _say(label: str, message: str) -> None:
    """The message as it is, on one line however long (the label coloured on a terminal)."""
    colour = "red" if label == "error" else "yellow"
    typer.echo(f"{typer.style(label + ':', fg=colour)} {message}", err=True)


def warn(message: str) -> None:
    _say("warning", message)


def fail(message: str, code: int = FAILED) -> NoReturn:
    _say("error", message)
    raise typer.Exit(code=code)
