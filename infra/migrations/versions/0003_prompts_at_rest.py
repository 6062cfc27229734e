"""Prompts at rest and the logging distribution: prompt text optional, per-tier propensities and expected costs.

Revision ID: 0003
Revises: 0002

- decisions.prompt and outcomes.prompt become nullable: with TIERWISE_PROMPT_STORAGE=hash or none the text is
  not kept (decisions.prompt_hash keeps the keyed HMAC in hash mode; outcomes.prompt_id is derived from it).
- decisions.propensities: {tier: probability} the logging policy gave every tier (exploration's distribution),
  so off-policy evaluation can tell a tier that could not have been chosen from one that merely was not.
- decisions.expected_costs: {tier: expected cost in USD}, the direct method's cost prediction for every tier,
  kept so off-policy estimates of cost need no prompt text.
- an index on outcomes.created_at for the retention purge.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.alter_column("prompt", existing_type=sa.Text, nullable=True)
        batch.add_column(sa.Column("propensities", sa.JSON, nullable=True))
        batch.add_column(sa.Column("expected_costs", sa.JSON, nullable=True))
    with op.batch_alter_table("outcomes") as batch:
        batch.alter_column("prompt", existing_type=sa.Text, nullable=True)
    op.create_index("ix_outcomes_created_at", "outcomes", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_outcomes_created_at", table_name="outcomes")
    # Rows stored without text get an empty prompt back, which the NOT NULL of 0002 accepts.
    op.execute(sa.text("UPDATE outcomes SET prompt = '' WHERE prompt IS NULL"))
    op.execute(sa.text("UPDATE decisions SET prompt = '' WHERE prompt IS NULL"))
    with op.batch_alter_table("outcomes") as batch:
        batch.alter_column("prompt", existing_type=sa.Text, nullable=False)
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("expected_costs")
        batch.drop_column("propensities")
        batch.alter_column("prompt", existing_type=sa.Text, nullable=False)
