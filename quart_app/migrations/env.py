"""Alembic's environment: migrations run on the connection that ``quart_app`` hands over.

The application upgrades its own database at start-up (``quart_app.migrations.upgrade``)
and from ``python -m quart_app.migrations``; both pass an open connection in
``config.attributes["connection"]``, inside the transaction that holds the
migration lock, so this file never opens a database of its own.
"""

from __future__ import annotations

from alembic import context

from quart_app.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through the application: python -m quart_app.migrations upgrade"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them: autogenerate writes batch operations.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
