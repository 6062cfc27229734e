"""A partial index of the decisions that still hold room on their session, for the reservation expiry's scan.

Revision ID: 0007
Revises: 0006

- ix_decisions_holding: `created_at` of the decisions not settled whose `reserved_usd` is above 0 (a session's
  decisions in flight; a sessionless decision reserves nothing). `Store.expire_holds` looks for the old ones
  every few minutes (serving/holds.py); through `ix_decisions_created_at` it read every decision older than the
  expiry, i.e. nearly the whole table of a long-running service. The condition is `infra.store.HOLDING`, written
  out here as it was when this revision was made, and rendered by each dialect as the query renders it (a literal
  0: a plan made for any value of a parameter, PostgreSQL's generic plan, cannot use a partial index).
- On PostgreSQL a store with decisions has the index built CONCURRENTLY, outside the revision's transaction: a
  plain CREATE INDEX blocks every write to `decisions` (all /route calls of the replicas still serving) while it
  reads the whole table. A build killed midway leaves an invalid index behind, which this revision drops and builds
  again when it runs again (migrations run one at a time: infra.store.run_alembic).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NAME = "ix_decisions_holding"
HOLDING = sa.and_(sa.column("settled") == sa.false(), sa.column("reserved_usd") > sa.literal_column("0"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_index(NAME, "decisions", ["created_at"], sqlite_where=HOLDING)
        return
    if bind.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM decisions)")).scalar():
        # A store without decisions (a new one): a plain build takes no time, and does not wait for the database's
        # other transactions as a concurrent one does.
        _build(concurrently=False)
        return
    with op.get_context().autocommit_block():
        # A concurrent build waits for every transaction in the database with an older snapshot (a backup, a long
        # report), not only for writers of this table: the service's 30 s lock_timeout would cancel it, leaving an
        # invalid index and a store that never becomes ready while the backup runs.
        lock_timeout = bind.execute(sa.text("SHOW lock_timeout")).scalar_one()
        bind.execute(sa.text("SET lock_timeout = '15min'"))
        try:
            _build(concurrently=True)
        finally:
            bind.execute(sa.select(sa.func.set_config("lock_timeout", lock_timeout, False)))


def _build(concurrently: bool) -> None:
    """The index on PostgreSQL, after dropping one a killed concurrent build left invalid; kept if a killed run had
    built it valid before stamping this revision."""
    if _invalid_index_left(NAME):
        op.drop_index(NAME, table_name="decisions", postgresql_concurrently=concurrently)
    op.create_index(
        NAME,
        "decisions",
        ["created_at"],
        postgresql_where=HOLDING,
        postgresql_concurrently=concurrently,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(NAME, table_name="decisions")


def _invalid_index_left(name: str) -> bool:
    """Whether the schema in use holds an index of that name that a killed concurrent build left invalid."""
    query = sa.text(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :name AND n.nspname = current_schema()"
    )
    return bool(op.get_bind().execute(query, {"name": name}).scalar())
