"""Who serves a decision, so an outcome posted while the proxy is still answering does not settle it.

Revision ID: 0005
Revises: 0004

- decisions.served_by: "proxy" for a decision the OpenAI-compatible door routes, calls upstream and settles with
  the upstream's usage; NULL for one the caller serves itself (/route). An outcome settles only the latter: a client
  that posted its score (and its own cost) for a door decision before the stream ended used to book its cost on
  the session in place of the real one, and the door's settlement then found the decision settled.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("served_by", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("served_by")
