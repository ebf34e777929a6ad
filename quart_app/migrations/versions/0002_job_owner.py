"""Jobs know their owner: a keyed hash of the session (or address) that started them.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-29

``owner`` is HMAC-SHA256 of the owner string under the app's SECRET_KEY, in
hex; never the session id itself.  Rows written before this revision have
no owner: only the operator's listing shows them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_history", sa.Column("owner", sa.String(64), nullable=True))
    op.create_index("ix_job_history_owner_finished", "job_history", ["owner", "finished_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_history_owner_finished", table_name="job_history")
    with op.batch_alter_table("job_history") as batch:
        batch.drop_column("owner")
