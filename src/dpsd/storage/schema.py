"""Tables, one metadata for SQLite and PostgreSQL.

Each record is a JSON document plus the columns that lookups and queries filter on.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

enrollments = sa.Table(
    "enrollments",
    metadata,
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
    # The document's creation time as the document holds it (its JSON text, unquoted), so
    # that an update can keep it without reading the record first.
    sa.Column("created", sa.String(40), nullable=False),
)

enrollment_groups = sa.Table(
    "enrollment_groups",
    metadata,
    sa.Column("id_key", sa.String(128), primary_key=True),
    sa.Column("enrollment_group_id", sa.String(128), nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("provisioning_status", sa.String(16), nullable=False),
    sa.Column("iot_hub_host_name", sa.String(255), nullable=True),
    sa.Column("attestation_type", sa.String(16), nullable=False),
    sa.Column("allocation_policy", sa.String(16), nullable=True),
    sa.Column("iot_edge", sa.Boolean, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    # As for enrollments: the creation time, so that an update keeps it without a read.
    sa.Column("created", sa.String(40), nullable=False),
)

registration_states = sa.Table(
    "registration_states",
    metadata,
    sa.Column("id_key", sa.String(128), primary_key=True),
    sa.Column("registration_id", sa.String(128), nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("group_key", sa.String(128), nullable=True),
    sa.Column("document", sa.Text, nullable=False),
    # The operation that left this state (its document, the state in it): written with the
    # state in one row, so that settling a registration is one write.
    sa.Column("operation", sa.Text, nullable=True),
)

ca_certificates = sa.Table(
    "ca_certificates",
    metadata,
    sa.Column("id_key", sa.String(256), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)

instance = sa.Table(
    "instance",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

access_policies = sa.Table(
    "access_policies",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("primary_key", sa.String(128), nullable=False),
    sa.Column("secondary_key", sa.String(128), nullable=False),
    sa.Column("rights", sa.String(255), nullable=False),
)

linked_hubs = sa.Table(
    "linked_hubs",
    metadata,
    sa.Column("id_key", sa.String(260), primary_key=True),
    sa.Column("host_name", sa.String(260), nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)

registration_operations = sa.Table(
    "registration_operations",
    metadata,
    sa.Column("id_key", sa.String(128), primary_key=True),
    sa.Column("registration_id", sa.String(128), nullable=False),
    sa.Column("etag", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)

# Device ids are case-sensitive and ordered byte by byte (they are ASCII): PostgreSQL's
# default collation may order by locale, so the column is collated "C" there.
_DEVICE_ID = sa.String(128).with_variant(sa.String(128, collation="C"), "postgresql")

hub_devices = sa.Table(
    "hub_devices",
    metadata,
    sa.Column("hub_key", sa.String(260), primary_key=True),
    sa.Column("device_id", _DEVICE_ID, primary_key=True),
    sa.Column("device_version", sa.BigInteger, nullable=False),
    sa.Column("twin_version", sa.BigInteger, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)

tpm_challenges = sa.Table(
    "tpm_challenges",
    metadata,
    sa.Column("id_key", sa.String(128), primary_key=True),
    sa.Column("registration_id", sa.String(128), nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)

tpm_hub_keys = sa.Table(
    "tpm_hub_keys",
    metadata,
    sa.Column("id_key", sa.String(128), primary_key=True),
    sa.Column("registration_id", sa.String(128), nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)
