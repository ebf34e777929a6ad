"""The history tables as the first release made them with ``create_all``.

Revision ID: 0001
Revises:
Create Date: 2025-11-29

A database that has these tables and no ``alembic_version`` (made by a
release before migrations) is stamped at this revision, not created again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_history",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("delay_ms", sa.Integer, nullable=False),
        sa.Column("produced", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_job_history_finished", "job_history", ["finished_at", "id"])
    op.create_index("ix_job_history_status_finished", "job_history", ["status", "finished_at"])
    op.create_table(
        "chat_history",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_chat_history_sent", "chat_history", ["sent_at", "pk"])


def downgrade() -> None:
    op.drop_table("chat_history")
    op.drop_table("job_history")
