"""A partial index of the decisions that still hold room on their session, for the reservation expiry's scan.

Revision ID: 0007
Revises: 0006

- ix_decisions_holding: `created_at` of the decisions not settled whose `reserved_usd` is above 0 (a session's
  decisions in flight; a sessionless decision reserves nothing). `Store.expire_holds` looks for the old ones
  every few minutes (serving/holds.py); through `ix_decisions_created_at` it read every decision older than the
  expiry, i.e. nearly the whole table of a long-running service. The condition is `infra.store.HOLDING`, written
  out here as it was when this revision was made, and rendered by each dialect as the query renders it (a literal
  0: a plan made for any value of a parameter, PostgreSQL's generic plan, cannot use a partial index).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HOLDING = sa.and_(sa.column("settled") == sa.false(), sa.column("reserved_usd") > sa.literal_column("0"))


def upgrade() -> None:
    op.create_index(
        "ix_decisions_holding", "decisions", ["created_at"], sqlite_where=HOLDING, postgresql_where=HOLDING
    )


def downgrade() -> None:
    op.drop_index("ix_decisions_holding", table_name="decisions")
