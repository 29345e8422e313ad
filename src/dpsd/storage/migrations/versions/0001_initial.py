"""Enrollments, registration states, the instance identity and its access policies.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrollments",
        sa.Column("id_key", sa.String(128), primary_key=True),
        sa.Column("registration_id", sa.String(128), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("provisioning_status", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("iot_hub_host_name", sa.String(255), nullable=True),
        sa.Column("attestation_type", sa.String(16), nullable=False),
        sa.Column("allocation_policy", sa.String(16), nullable=True),
        sa.Column("iot_edge", sa.Boolean, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    for column in ("provisioning_status", "device_id", "iot_hub_host_name", "attestation_type"):
        op.create_index(f"ix_enrollments_{column}", "enrollments", [column, "id_key"])
    op.create_table(
        "registration_states",
        sa.Column("id_key", sa.String(128), primary_key=True),
        sa.Column("registration_id", sa.String(128), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_table(
        "instance",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "access_policies",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("primary_key", sa.String(128), nullable=False),
        sa.Column("secondary_key", sa.String(128), nullable=False),
        sa.Column("rights", sa.String(255), nullable=False),
    )


def downgrade() -> None:
    for table in ("access_policies", "instance", "registration_states", "enrollments"):
        op.drop_table(table)
