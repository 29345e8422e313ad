"""The operation that left a registration state, kept in the state's row: settling a
registration writes one row, not a state and an operation.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registration_states") as batch:
        batch.add_column(sa.Column("operation", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registration_states") as batch:
        batch.drop_column("operation")
