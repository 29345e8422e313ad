"""TPM attestation: the latest challenge key of each TPM registration (until it expires)
and the key of each TPM device's hub identity.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tpm_challenges",
        sa.Column("id_key", sa.String(128), primary_key=True),
        sa.Column("registration_id", sa.String(128), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_table(
        "tpm_hub_keys",
        sa.Column("id_key", sa.String(128), primary_key=True),
        sa.Column("registration_id", sa.String(128), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tpm_hub_keys")
    op.drop_table("tpm_challenges")
