"""The first schema: policy revisions and activations, events, per-rule counters.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "policy_revisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("revision", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("rule_count", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
    )
    op.create_table(
        "policy_activations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("policy_id", sa.Integer(), sa.ForeignKey("policy_revisions.id"), nullable=False),
        sa.Column("activated", sa.Float(), nullable=False),
        sa.Column("previous", sa.String(64), nullable=True),
    )
    op.create_index("ix_policy_activations_policy_id", "policy_activations", ["policy_id"])
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=True),
        sa.Column("verdict", sa.String(8), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(255), nullable=True),
        sa.Column("proto", sa.String(16), nullable=True),
        sa.Column("src_ip", sa.String(45), nullable=True),
        sa.Column("src_port", sa.Integer(), nullable=True),
        sa.Column("dest_ip", sa.String(45), nullable=True),
        sa.Column("dest_port", sa.Integer(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_event_type", "events", ["event_type"])
    op.create_index("ix_events_verdict", "events", ["verdict"])
    op.create_index("ix_events_rule", "events", ["rule"])
    op.create_table(
        "rule_counters",
        sa.Column("rule", sa.String(255), primary_key=True),
        sa.Column("packets", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("last_hit", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("rule_counters")
    op.drop_index("ix_events_rule", "events")
    op.drop_index("ix_events_verdict", "events")
    op.drop_index("ix_events_event_type", "events")
    op.drop_index("ix_events_time", "events")
    op.drop_table("events")
    op.drop_index("ix_policy_activations_policy_id", "policy_activations")
    op.drop_table("policy_activations")
    op.drop_table("policy_revisions")
