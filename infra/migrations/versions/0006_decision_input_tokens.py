"""The input tokens a decision was priced at, when its caller counted them.

Revision ID: 0006
Revises: 0005

- decisions.input_tokens: the count `/route`'s `input_tokens` gave (the OpenAI-compatible door's own count of the
  conversation it sends); NULL when routing estimated the input from the prompt. Off-policy evaluation prices a
  candidate model's choices at it (training/ope_eval.py), as the service priced the logged decision, and the admin
  page's savings against always-top price the top tier at it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("input_tokens", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("input_tokens")
