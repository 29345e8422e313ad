"""The devices of the IoT hubs dpsd serves itself.

Keyed by the hub's lower-cased host name and the device id as written (IoT Hub's device ids
are case-sensitive); the two versions are what conditional writes compare.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_devices",
        sa.Column("hub_key", sa.String(260), primary_key=True),
        sa.Column(
            "device_id",
            sa.String(128).with_variant(sa.String(128, collation="C"), "postgresql"),
            primary_key=True,
        ),
        sa.Column("device_version", sa.BigInteger, nullable=False),
        sa.Column("twin_version", sa.BigInteger, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hub_devices")
