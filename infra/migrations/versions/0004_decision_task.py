"""The request's task hint on each decision, so `tierwise train --from-store` learns the caller's own tasks.

Revision ID: 0004
Revises: 0003

- decisions.task: the `task` a request named (router.task_hint), NULL without one. `export_outcomes` gives an
  outcome settled by such a decision that task as its category, so a model trained from the store keeps a
  prior per task in the vocabulary its callers use.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("task", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("task")
