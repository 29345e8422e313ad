"""How every dpsd command reports what went wrong: one line on stderr, never a traceback,
and its exit status (1: it failed; 2: it was used wrongly, as for a usage error)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

FAILED = 1
USAGE = 2


def _say(label: str, message: str) -> None:
    """The message as it is (no markup: it quotes input), on one line however long."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text.assemble((f"{label}:", "red" if label == "error" else "yellow"), " ", message)
    )


def warn(message: str) -> None:
    _say("warning", message)


def fail(message: str, code: int = FAILED) -> NoReturn:
    _say("error", message)
    raise typer.Exit(code=code)
