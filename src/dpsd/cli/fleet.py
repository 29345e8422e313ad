"""``dpsd export`` and ``dpsd import``: whole fleets in and out of any DPS service API, with
a progress bar on a terminal and a summary at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from dpsd.cli.output import Output, OutputOption, format_rows, print_json
from dpsd.cli.target import (
    CaFileOption,
    ConnectionStringOption,
    Database,
    DataDir,
    TargetOptions,
    fail,
    reported_failures,
)

if TYPE_CHECKING:
    from dpsd.cli.transfer import ExportCounts, ImportSummary

DEFAULT_CONCURRENCY = 8

Concurrency = Annotated[
    int,
    typer.Option("--concurrency", min=1, max=64, help="Requests in flight at once."),
]


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar with rate and ETA on stderr when it is a terminal, silent otherwise; yields
    what to call with each number of records done."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Records per second."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")

    console = Console(stderr=True)
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


ExportRun = Callable[[TextIO], "ExportCounts"]


def _export_to(file: Path, export: ExportRun) -> ExportCounts:
    """Write ``file`` whole or not at all: the records go to a side file renamed at the end."""
    if str(file) == "-":
        return export(sys.stdout)
    partial = file.with_name(file.name + ".partial")
    try:
        sink = partial.open("w", encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {partial}: {error.strerror or error}")
    try:
        with sink:
            counts = export(sink)
        os.replace(partial, file)
    except OSError as error:
        partial.unlink(missing_ok=True)
        fail(f"cannot write {file}: {error.strerror or error}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return counts


def export_command(
    file: Annotated[Path, typer.Argument(help="Where to write the JSON Lines ('-': stdout).")],
    registrations: Annotated[
        bool,
        typer.Option("--registrations", help="Also export group devices' registration states."),
    ] = False,
    concurrency: Concurrency = DEFAULT_CONCURRENCY,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Write every enrollment group and individual enrollment, with their keys and
    certificates, as JSON Lines."""
    import asyncio

    from rich.console import Console

    from dpsd.cli.transfer import export_fleet

    target = TargetOptions(connection_string, ca_file, data_dir, database).resolve()
    with reported_failures(), progress_bar("exporting", None) as advance:

        def export(sink: TextIO) -> ExportCounts:
            async def run() -> ExportCounts:
                async with target.async_client() as client:
                    return await export_fleet(
                        client,
                        sink,
                        registrations=registrations,
                        concurrency=concurrency,
                        progress=advance,
                    )

            return asyncio.run(run())

        counts = _export_to(file, export)
    states = f", {counts.registrations} registration states" if registrations else ""
    Console(stderr=True, highlight=False).print(
        f"exported {counts.enrollments} enrollments, {counts.groups} groups{states}"
    )


def _count_lines(path: Path) -> int:
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def _print_summary(summary: ImportSummary, dry_run: bool, output: Output) -> None:
    from dpsd.cli.transfer import Outcome

    counts = {outcome.value: summary.counts[outcome] for outcome in Outcome}
    if output is Output.json:
        print_json(
            {
                "dryRun": dry_run,
                **counts,
                "reasons": [
                    {"outcome": str(outcome), "reason": reason, "count": n, "examples": where}
                    for outcome, reason, n, where in summary.reason_counts()
                ],
            }
        )
        return
    prefix = "dry run, nothing written; the import would end with: " if dry_run else ""
    typer.echo(prefix + ", ".join(f"{n} {name}" for name, n in counts.items()))
    if summary.reasons:
        rows = [("outcome", "reason", "count", "for example")]
        rows.extend(
            (str(outcome), reason, str(n), ", ".join(where))
            for outcome, reason, n, where in summary.reason_counts()
        )
        typer.echo(format_rows(rows, header=True))


def import_command(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="A `dpsd export` file."),
    ],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Only read the target: say what would be created, updated, skipped or refused,"
            " and why (each record checked as the service checks it).",
        ),
    ] = False,
    update_existing: Annotated[
        bool,
        typer.Option(
            "--update-existing",
            help="Write over records the target already holds (default: skip them).",
        ),
    ] = False,
    concurrency: Concurrency = DEFAULT_CONCURRENCY,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Create the file's enrollments and groups in the target with bulk operations.
    Records already there are skipped, so an interrupted import resumes where it stopped."""
    import asyncio

    from dpsd.cli.dry_run import refusal
    from dpsd.cli.transfer import ImportSummary, Outcome, import_fleet

    target = TargetOptions(connection_string, ca_file, data_dir, database).resolve()
    summary = ImportSummary()
    description = "checking" if dry_run else "importing"
    try:
        with (
            reported_failures(),
            progress_bar(description, _count_lines(file)) as advance,
            file.open(encoding="utf-8", errors="replace") as lines,
        ):

            async def run() -> None:
                async with target.async_client() as client:
                    await import_fleet(
                        client,
                        lines,
                        summary,
                        update_existing=update_existing,
                        dry_run=dry_run,
                        concurrency=concurrency,
                        progress=advance,
                        check=refusal if dry_run else None,
                    )

            asyncio.run(run())
    finally:
        _print_summary(summary, dry_run, output)
    if summary.counts[Outcome.failed]:
        failed = summary.counts[Outcome.failed]
        records = f"{failed} record{'s' if failed != 1 else ''}"
        fail(
            f"{records} would fail (reasons above)"
            if dry_run
            else f"{records} failed (reasons above)"
        )
