"""How the client commands print records: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from dpsd.cli.target import Output

Record = dict[str, Any]

Column = tuple[str, str]
"""(heading, dotted path into the record)"""


def value_at(record: Record, path: str) -> Any:
    value: Any = record
    for name in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def print_record(record: Record, output: Output, fields: Sequence[Column]) -> None:
    """One record: its fields down the page, or the whole record as JSON."""
    if output is Output.json:
        print_json(record)
        return
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # keys and etags are copied whole, never cut short
    for heading, path in fields:
        table.add_row(heading, _cell(value_at(record, path)))
    Console(highlight=False).print(table)


def print_records(records: Iterable[Record], output: Output, columns: Sequence[Column]) -> int:
    """Many records, a row each; JSON is one array. Returns how many were printed."""
    if output is Output.json:
        listed = list(records)
        print_json(listed)
        return len(listed)
    table = Table(*(heading for heading, _ in columns))
    count = 0
    for record in records:
        table.add_row(*(_cell(value_at(record, path)) for _, path in columns))
        count += 1
    Console(highlight=False).print(table)
    return count
