"""Alembic's environment for the store: run programmatically by fw.store.database.migrate.

The caller passes an open connection in `config.attributes["connection"]`; there is no alembic.ini
and no logging set-up here (the daemon's logging stays as it is). SQLite gets batch mode, so later
migrations that alter tables work there too.
"""

from alembic import context

from fw.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
