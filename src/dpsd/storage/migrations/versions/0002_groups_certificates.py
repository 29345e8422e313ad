"""Enrollment groups, CA certificates, and the group a registration state belongs to.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrollment_groups",
        sa.Column("id_key", sa.String(128), primary_key=True),
        sa.Column("enrollment_group_id", sa.String(128), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("provisioning_status", sa.String(16), nullable=False),
        sa.Column("iot_hub_host_name", sa.String(255), nullable=True),
        sa.Column("attestation_type", sa.String(16), nullable=False),
        sa.Column("allocation_policy", sa.String(16), nullable=True),
        sa.Column("iot_edge", sa.Boolean, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_table(
        "ca_certificates",
        sa.Column("id_key", sa.String(256), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    with op.batch_alter_table("registration_states") as batch:
        batch.add_column(sa.Column("group_key", sa.String(128), nullable=True))
        batch.create_index("ix_registration_states_group_key", ["group_key", "id_key"])


def downgrade() -> None:
    with op.batch_alter_table("registration_states") as batch:
        batch.drop_index("ix_registration_states_group_key")
        batch.drop_column("group_key")
    op.drop_table("ca_certificates")
    op.drop_table("enrollment_groups")
