"""How the commands print records: plain text tables for people, JSON for scripts.

Tables are columns padded to their widest cell, never wrapped or cut short, so that ids,
keys and etags can be copied whole from any terminal (and Rich, which would fit them to
the terminal's width, is not loaded: it costs a client command a sixth of its time)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer

Record = dict[str, Any]


class Output(enum.StrEnum):
    table = "table"
    json = "json"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output", "-o", envvar="DPSD_OUTPUT", help="Tables for people, JSON for scripts."
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", hidden=True, help="The same as --output json (older name).")
]
ShowKeys = Annotated[
    bool,
    typer.Option("--show-keys", help="Include the keys (and connection strings holding them)."),
]


def chosen(output: Output, as_json: bool) -> Output:
    """--output, or JSON when the older --json was given."""
    return Output.json if as_json else output


Column = tuple[str, str]
"""(heading, dotted path into the record)"""

_CONTROL = dict.fromkeys((*range(32), 127), "?")
"""Control characters in a cell would move the cursor or colour the terminal."""


def value_at(record: Record, path: str) -> Any:
    value: Any = record
    for name in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def cell(value: Any) -> str:
    """A value as one line of text: ``-`` for nothing, yes/no, lists joined, objects as
    compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value).translate(_CONTROL)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def format_rows(rows: Sequence[Sequence[str]], *, header: bool) -> str:
    """Rows of cells as aligned columns, two spaces apart; under a header, a rule."""
    if not rows:
        return ""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if header:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Headings and values down the page."""
    typer.echo(format_rows([(heading, cell(value)) for heading, value in pairs], header=False))


def print_record(record: Record, output: Output, fields: Sequence[Column]) -> None:
    """One record: its fields down the page, or the whole record as JSON."""
    if output is Output.json:
        print_json(record)
        return
    print_fields((heading, value_at(record, path)) for heading, path in fields)


def print_records(records: Iterable[Record], output: Output, columns: Sequence[Column]) -> int:
    """Many records, a row each; JSON is one array. Returns how many were printed."""
    listed = list(records)
    if output is Output.json:
        print_json(listed)
        return len(listed)
    rows = [tuple(heading for heading, _ in columns)]
    rows.extend(tuple(cell(value_at(record, path)) for _, path in columns) for record in listed)
    typer.echo(format_rows(rows, header=True))
    return len(listed)
