"""A ``created`` column filled from the documents: what migrations 0006 (enrollments) and
0008 (enrollment groups) add, so that an update keeps a record's creation time without
reading the record first (one conditional ``UPDATE ... RETURNING`` writes the new document
around the stored time)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

_COLUMN = "created"
_BATCH = 1000  # rows read and filled at a time


def add_created_column(table_name: str) -> None:
    """Add the column, fill it from each row's document, then make it required."""
    op.add_column(table_name, sa.Column(_COLUMN, sa.String(40), nullable=True))
    _fill(sa.table(table_name, sa.column("id_key"), sa.column("document"), sa.column(_COLUMN)))
    with op.batch_alter_table(table_name) as batch_op:
        batch_op.alter_column(_COLUMN, existing_type=sa.String(40), nullable=False)


def drop_created_column(table_name: str) -> None:
    with op.batch_alter_table(table_name) as batch_op:
        batch_op.drop_column(_COLUMN)


def _fill(table: sa.TableClause) -> None:
    connection = op.get_bind()
    fill = (
        sa.update(table)
        .where(table.c.id_key == sa.bindparam("key"))
        .values({_COLUMN: sa.bindparam("value")})
    )
    after = ""
    while True:  # in pages of _BATCH rows, in key order, so that memory stays bounded
        rows = connection.execute(
            sa.select(table.c.id_key, table.c.document)
            .where(table.c.id_key > after)
            .order_by(table.c.id_key)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        batch = [{"key": key, "value": json.loads(document)[_COLUMN]} for key, document in rows]
        connection.execute(fill, batch)
        after = rows[-1][0]
