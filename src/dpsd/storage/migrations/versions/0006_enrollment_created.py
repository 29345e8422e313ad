"""Enrollments keep their creation time in a column of its own as well.

An update that replaces everything but the creation time then needs no read first: one
conditional ``UPDATE ... RETURNING`` writes the new document around the stored time.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from dpsd.storage.migrations.created_column import add_created_column, drop_created_column

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_created_column("enrollments")


def downgrade() -> None:
    drop_created_column("enrollments")
