"""Linked IoT hubs and device registration operations.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "linked_hubs",
        sa.Column("id_key", sa.String(260), primary_key=True),
        sa.Column("host_name", sa.String(260), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_table(
        "registration_operations",
        sa.Column("id_key", sa.String(128), primary_key=True),
        sa.Column("registration_id", sa.String(128), nullable=False),
        sa.Column("etag", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_registration_operations_created_at", "registration_operations", ["created_at"]
    )


def downgrade() -> None:
    op.drop_table("registration_operations")
    op.drop_table("linked_hubs")
