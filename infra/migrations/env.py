"""Alembic environment: runs on the connection that Store.migrate() hands over."""

from alembic import context

from infra.store import metadata

connection = context.config.attributes["connection"]
# A transaction per revision (infra.store.run_alembic hands over a connection outside one): a revision may step out
# of it for work PostgreSQL does only outside a transaction (op.get_context().autocommit_block(), migration 0007).
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
