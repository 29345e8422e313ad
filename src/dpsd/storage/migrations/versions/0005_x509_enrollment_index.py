"""A partial index of X.509 individual enrollments.

The TLS trust store is refreshed from the X.509 enrollments every 30 seconds; without an
index that is a scan of every enrollment (about a second at a million, on the event loop).
The index holds X.509 enrollments only, so other enrollments' writes do not pay for it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_X509 = sa.text("attestation_type = 'x509'")


def upgrade() -> None:
    op.create_index(
        "ix_enrollments_x509",
        "enrollments",
        ["id_key"],
        sqlite_where=_X509,
        postgresql_where=_X509,
    )


def downgrade() -> None:
    op.drop_index("ix_enrollments_x509", table_name="enrollments")
