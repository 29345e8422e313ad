"""Enrollment groups keep their creation time in a column of its own, as enrollments do
since 0006: a PUT of a group is then one statement too.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from dpsd.storage.migrations.created_column import add_created_column, drop_created_column

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_created_column("enrollment_groups")


def downgrade() -> None:
    drop_created_column("enrollment_groups")
