"""Decisions keep their evidence: propensity, per-tier predictions, novelty, the realised cost and usage, a prompt hash.

Revision ID: 0002
Revises: 0001

- propensity: the probability with which the chosen tier was chosen (1.0 without exploration), for off-policy evaluation.
- explored: whether exploration (not the policy) chose the tier.
- predicted_quality: {tier: predicted score} at decision time.
- novelty: how far the prompt is from the training distribution (higher = farther), when the model has a reference.
- cost_usd, tokens_in, tokens_out, latency_ms, served_model: what an upstream call really cost (the OpenAI-compatible
  door settles them), so a later /outcomes needs only a score.
- prompt_hash: a keyed hash of the prompt, for deployments that don't store prompt text.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (
    sa.Column("propensity", sa.Float, nullable=True),
    sa.Column("explored", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("predicted_quality", sa.JSON, nullable=True),
    sa.Column("novelty", sa.Float, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("tokens_in", sa.Integer, nullable=True),
    sa.Column("tokens_out", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("served_model", sa.String(256), nullable=True),
    sa.Column("prompt_hash", sa.String(64), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        for column in COLUMNS:
            batch.add_column(column.copy())
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_decisions_created_at", table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
