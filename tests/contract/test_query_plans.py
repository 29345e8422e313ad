"""The statements that must stay cheap at a million enrollments use an index (SQLite plans)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from dpsd.domain.query import ENROLLMENT_QUERY_FIELDS, parse_query
from dpsd.storage.engine import create_engine
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import ENROLLMENTS, compile_condition


def _plan(database: Path, query: str) -> str:
    where = parse_query(query, ENROLLMENT_QUERY_FIELDS).where
    assert where is not None
    table = ENROLLMENTS.table
    statement = (
        sa.select(table.c.document)
        .where(compile_condition(where, ENROLLMENTS.query_columns))
        .where(table.c.id_key > "a")
        .order_by(table.c.id_key)
        .limit(100)
    )
    compiled = statement.compile(
        dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True}
    )
    assert compiled.positiontup is not None
    params = [compiled.params[name] for name in compiled.positiontup]
    with sqlite3.connect(database) as connection:
        rows = connection.execute(f"EXPLAIN QUERY PLAN {compiled}", params).fetchall()
    return " | ".join(str(row[-1]) for row in rows)


async def test_x509_enrollments_are_found_without_a_scan(tmp_path: Path) -> None:
    """The TLS trust refresh reads them every 30 s, on the event loop."""
    database = tmp_path / "plans.db"
    engine = create_engine(f"sqlite:///{database}")
    await migrate(engine)
    await engine.dispose()

    x509 = _plan(database, "SELECT * WHERE attestation.type = 'x509'")
    assert "USING INDEX ix_enrollments_x509" in x509
    disabled = _plan(database, "SELECT * WHERE provisioningStatus = 'disabled'")
    assert "SCAN enrollments" not in disabled, disabled
