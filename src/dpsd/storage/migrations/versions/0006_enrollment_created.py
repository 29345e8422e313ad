"""Enrollments keep their creation time in a column of its own as well.

An update that replaces everything but the creation time then needs no read first: one
conditional ``UPDATE ... RETURNING`` writes the new document around the stored time.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 1000  # rows read and filled at a time


def upgrade() -> None:
    op.add_column("enrollments", sa.Column("created", sa.String(40), nullable=True))
    table = sa.table(
        "enrollments", sa.column("id_key"), sa.column("document"), sa.column("created")
    )
    connection = op.get_bind()
    fill = (
        sa.update(table)
        .where(table.c.id_key == sa.bindparam("key"))
        .values(created=sa.bindparam("value"))
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
        batch = [{"key": key, "value": json.loads(document)["created"]} for key, document in rows]
        connection.execute(fill, batch)
        after = rows[-1][0]
    with op.batch_alter_table("enrollments") as batch_op:
        batch_op.alter_column("created", existing_type=sa.String(40), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch_op:
        batch_op.drop_column("created")
