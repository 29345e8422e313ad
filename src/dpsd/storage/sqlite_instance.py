"""The ID scope and shared access policies of a SQLite store, read with the standard
library's ``sqlite3`` alone.

The client commands sign their requests to the local dpsd with its owner policy, read from
its store on every start. SQLAlchemy and aiosqlite take some 0.4 s to import, more than a
whole command may take; a SQLite store that a server has initialised is read here in a few
milliseconds instead. The tables are those of ``schema.py`` (a contract test reads one store
both ways). Anything unexpected (no file, another schema, a lock) raises, and the caller
goes the full way, which says in one line what is wrong.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from dpsd.domain.sas import SharedAccessPolicy, parse_rights

_PREFIX = "sqlite:///"


class NotReadHere(Exception):
    """The store is not one this module reads: the caller goes the full way."""


def plain_sqlite_file(database_url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL with nothing else in it; None for any other
    URL (PostgreSQL, SQLite URIs and query options are SQLAlchemy's to read)."""
    if not database_url.startswith(_PREFIX):
        return None
    path = database_url[len(_PREFIX) :]
    if not path or path == ":memory:" or "?" in path or path.startswith("file:"):
        return None
    return Path(path).resolve()


def read_sqlite_instance(file: Path) -> tuple[str, list[SharedAccessPolicy]]:
    """The ID scope and the policies of the initialised SQLite store in ``file``; raises
    NotReadHere when the file is missing or holds no initialised dpsd store."""
    uri = f"{file.as_uri()}?mode=rw"  # never creates the file
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as connection:
            scope = connection.execute(
                "SELECT value FROM instance WHERE name = 'id_scope'"
            ).fetchone()
            rows = connection.execute(
                "SELECT name, primary_key, secondary_key, rights FROM access_policies"
            ).fetchall()
    except sqlite3.Error as error:
        raise NotReadHere(str(error)) from error
    if scope is None or not rows:
        raise NotReadHere("the store is not initialised")
    try:
        policies = [
            SharedAccessPolicy(
                name=name, primary_key=primary, secondary_key=secondary, rights=parse_rights(rights)
            )
            for name, primary, secondary, rights in rows
        ]
    except (TypeError, ValueError, AttributeError) as error:
        raise NotReadHere(str(error)) from error
    return str(scope[0]), policies
