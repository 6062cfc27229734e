"""Sessions, decisions and outcomes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("cap_usd", sa.Float, nullable=True),
        sa.Column("spent_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("reserved_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("tier", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("expected_cost_usd", sa.Float, nullable=False),
        sa.Column("reserved_usd", sa.Float, nullable=False),
        sa.Column("router_version", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("settled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_decisions_session_id", "decisions", ["session_id"])
    op.create_table(
        "outcomes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision_id", sa.String(32), nullable=True),
        sa.Column("prompt_id", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("tokens_in", sa.Integer, nullable=True),
        sa.Column("tokens_out", sa.Integer, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_outcomes_decision_id", "outcomes", ["decision_id"])


def downgrade() -> None:
    op.drop_table("outcomes")
    op.drop_table("decisions")
    op.drop_table("sessions")
